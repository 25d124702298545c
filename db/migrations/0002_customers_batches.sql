-- cangrejo schema, version 2: customer PII (encrypted, crypto-shreddable) and idempotency keys
-- of batch uploads.

-- One row per customer of a merchant: the random secret from which (with the master key named
-- by key_id) the customer's data key is derived. Erasure deletes the secret and the
-- ciphertexts: no copy of a ciphertext (replica, backup) can be read again.
CREATE TABLE customers (
    merchant_id  bigint NOT NULL,
    customer_ref text NOT NULL,
    key_id       text NOT NULL,
    secret       bytea,          -- NULL once erased
    erased_at    timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, customer_ref)
);

-- The personal data given with one order, AES-256-GCM under the customer's key, with the row's
-- identity (merchant, order, customer) as associated data so a ciphertext cannot be moved.
CREATE TABLE order_pii (
    merchant_id  bigint NOT NULL,
    order_id     text NOT NULL,
    customer_ref text NOT NULL,
    nonce        bytea NOT NULL,
    ciphertext   bytea NOT NULL,
    PRIMARY KEY (merchant_id, order_id)
);
CREATE INDEX order_pii_by_customer ON order_pii (merchant_id, customer_ref);

-- Which orders a customer appears in (kept after erasure: order ids are not personal data).
CREATE INDEX orders_by_customer ON orders (merchant_id, customer_ref) WHERE customer_ref IS NOT NULL;

-- Idempotency-Key of batch uploads: the first result is replayed for at least 24 hours.
CREATE TABLE idempotency_keys (
    merchant_id  bigint NOT NULL,
    key          text NOT NULL,
    request_hash bytea NOT NULL,
    state        smallint NOT NULL DEFAULT 0,  -- 0 running, 1 done
    status       smallint,
    response     text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
