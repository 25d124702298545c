#!/usr/bin/env python3
"""Writes one batch of N orders in three forms: NDJSON for POST .../order-batches, and the same
rows as CSV for `psql \\copy` into order_keys, orders and order_items (for another merchant).

Usage: batch_gen.py N MERCHANT COPY_MERCHANT OUT_DIR
"""
import datetime as dt
import hashlib
import json
import os
import random
import sys


def main():
    n, merchant, copy_merchant, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    rng = random.Random(1)
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    run = now.strftime("%H%M%S")
    with open(os.path.join(out, "batch.ndjson"), "w") as nd, \
            open(os.path.join(out, "keys.csv"), "w") as keys, \
            open(os.path.join(out, "orders.csv"), "w") as orders, \
            open(os.path.join(out, "items.csv"), "w") as items:
        for i in range(n):
            placed = now - dt.timedelta(minutes=rng.randrange(24 * 60))
            lines = [{"sku": f"SKU-{rng.randrange(40)}", "name": f"Item {rng.randrange(40)}",
                      "quantity": rng.randrange(1, 4), "unit_price_cents": rng.randrange(200, 2500)}
                     for _ in range(rng.randrange(1, 5))]
            gross = sum(x["quantity"] * x["unit_price_cents"] for x in lines)
            order = {"order_id": f"pos-{run}-{i}", "store_id": rng.randrange(1, 6),
                     "channel": "pos", "fulfillment": "dine_in",
                     "placed_at": placed.isoformat(), "currency": "EUR", "items": lines,
                     "tax_cents": gross // 10}
            nd.write(json.dumps(order) + "\n")
            oid, ts = f"copy-{run}-{i}", placed.isoformat()
            digest = hashlib.sha256(oid.encode()).hexdigest()
            keys.write(f"{copy_merchant},{oid},{ts},\\\\x{digest}\n")
            orders.write(f"{copy_merchant},{ts},{oid},{order['store_id']},1,2,EUR,{gross},0,"
                         f"{gross},{gross // 10},{gross + gross // 10},"
                         f"{sum(x['quantity'] for x in lines)}\n")
            for k, x in enumerate(lines):
                items.write(f"{copy_merchant},{ts},{oid},{k},{x['sku']},{x['name']},"
                            f"{x['quantity']},{x['unit_price_cents']}\n")


if __name__ == "__main__":
    main()
