"""Many connections at once, for the memory scenario (asyncio, loopback only).

idle(port, n, pid): opens n keep-alive connections, each served one request (GET /livez), and
keeps them open and idle; returns the server's VmRSS before and with them open.

concurrent(port, n, pid): opens n connections at once, then each sends one request and reads
the answer while all n stay open; returns how many were served 200 and the peak VmRSS.

Connections come from several loopback source addresses (127.0.0.2, 127.0.0.3, ...), at most
PER_ADDRESS each, the way many clients arrive, so that the per-address connection limit
(CANGREJO_MAX_CONNECTIONS_PER_IP, default 2000) is not what is measured.
"""
import asyncio
import time

PER_ADDRESS = 1000
REQUEST = b"GET /livez HTTP/1.1\r\nHost: bench\r\n\r\n"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _source(i):
    return f"127.0.0.{2 + i // PER_ADDRESS}"


async def _open(port, i, timeout):
    return await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(_source(i), 0), limit=1 << 16),
        timeout)


async def _exchange(reader, writer, timeout):
    """One request on an open connection; the status code (the body is read and dropped)."""
    writer.write(REQUEST)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await asyncio.wait_for(reader.readexactly(length), timeout)
    return status


async def _connect_all(port, n, timeout, concurrency=500):
    """n open connections (None where connecting failed), at most `concurrency` connecting at
    a time so that the listen backlog is not what is measured."""
    sem = asyncio.Semaphore(concurrency)
    errors = []

    async def one(i):
        async with sem:
            try:
                return await _open(port, i, timeout)
            except (OSError, asyncio.TimeoutError) as e:
                errors.append(repr(e))
                return None

    conns = await asyncio.gather(*(one(i) for i in range(n)))
    return conns, errors


def _close(conns):
    for c in conns:
        if c:
            c[1].close()


async def _idle(port, n, pid, settle_s):
    before = rss_kib(pid)
    conns, errors = await _connect_all(port, n, 30)
    statuses = await asyncio.gather(
        *(_exchange(r, w, 30) for r, w in (c for c in conns if c)), return_exceptions=True)
    ok = sum(1 for s in statuses if s == 200)
    failed = [repr(s) for s in statuses if s != 200]
    await asyncio.sleep(settle_s)  # every connection now idle, kept alive by the server
    with_open = rss_kib(pid)
    open_still = sum(1 for c in conns if c and not c[0].at_eof())
    _close(conns)
    return {"connections": n, "served": ok, "still_open": open_still,
            "connect_errors": errors[:5], "request_errors": failed[:5],
            "rss_before_kib": before, "rss_kib": with_open}


async def _concurrent(port, n, pid):
    peak = rss_kib(pid)
    started = time.monotonic()
    conns, errors = await _connect_all(port, n, 60)
    opened = sum(1 for c in conns if c)
    peak = max(peak, rss_kib(pid))
    connected_s = time.monotonic() - started
    statuses = await asyncio.gather(
        *(_exchange(r, w, 60) for r, w in (c for c in conns if c)), return_exceptions=True)
    peak = max(peak, rss_kib(pid))
    served = sum(1 for s in statuses if s == 200)
    failures = [repr(s) for s in statuses if s != 200][:5]
    _close(conns)
    return {"connections": n, "opened": opened, "served": served,
            "connect_errors": errors[:5], "request_errors": failures,
            "seconds": round(time.monotonic() - started, 2),
            "connect_seconds": round(connected_s, 2), "peak_rss_kib": peak}


def idle(port, n, pid, settle_s=1.0):
    return asyncio.run(_idle(port, n, pid, settle_s))


def concurrent(port, n, pid):
    return asyncio.run(_concurrent(port, n, pid))
