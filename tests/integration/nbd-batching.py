# Batched socket I/O of `ociblk serve` (run by nbd-batching.sh through nbdsh's python).
# Prints "PASS desc" / "FAIL desc" lines.  The receive buffer is NBD_RECV_BUFFER_BYTES (256 KiB),
# a round's replies at most NBD_SEND_IOVECS_MAX (256) iovecs: the cases below cross both.
import os, random, socket, struct, threading, time
import nbd

SOCK = os.environ["SOCK"]
SIZE = 16 << 20
BASE = open(os.environ["BASE"], "rb").read()
MAGIC, OPTS, REQ = 0x4e42444d41474943, 0x49484156454f5054, 0x25609513
SEED = int(os.environ.get("OCIBLK_SEED", str(random.randrange(1 << 30))))
rng = random.Random(SEED)
print("PASS seed %d (OCIBLK_SEED replays)" % SEED, flush=True)

def t(cond, desc):
    print(("PASS " if cond else "FAIL ") + desc, flush=True)

def recvall(s, n):
    out = bytearray()
    while len(out) < n:
        d = s.recv(min(n - len(out), 1 << 20))
        if not d:
            raise EOFError
        out += d
    return bytes(out)

def raw(name=b"ctr"):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect(SOCK)
    m, o2, hf = struct.unpack(">QQH", recvall(s, 18))
    assert m == MAGIC and o2 == OPTS and hf & 1
    s.sendall(struct.pack(">I", 3))
    s.sendall(struct.pack(">QII", OPTS, 1, len(name)) + name)
    size, fl = struct.unpack(">QH", recvall(s, 10))
    assert size == SIZE
    return s

def req(typ, off, length, handle, flags=0):
    return struct.pack(">IHHQQI", REQ, flags, typ, handle, off, length)

# model of the device as this script changed it
model = bytearray(BASE)

class Stream:
    """A pipelined request stream and what its simple replies must be."""
    def __init__(self):
        self.data = bytearray()
        self.expect = []     # (handle, read length or 0, expected bytes or None)
        self.h = 0
    def write(self, off, payload):
        self.h += 1
        self.data += req(1, off, len(payload), self.h) + payload
        model[off:off + len(payload)] = payload
        self.expect.append((self.h, 0, None))
    def read(self, off, n):
        self.h += 1
        self.data += req(0, off, n, self.h)
        self.expect.append((self.h, n, bytes(model[off:off + n])))
    def flush(self):
        self.h += 1
        self.data += req(3, 0, 0, self.h)
        self.expect.append((self.h, 0, None))

def collect(s, st, out):
    """Reads every reply of st (any order); out["bad"] lists problems."""
    want = {h: (n, exp) for h, n, exp in st.expect}
    bad = []
    try:
        for _ in range(len(want)):
            m, err, hd = struct.unpack(">IIQ", recvall(s, 16))
            if m != 0x67446698 or hd not in want or err:
                bad.append("reply magic %x handle %d error %d" % (m, hd, err))
                break
            n, exp = want.pop(hd)
            if n:
                d = recvall(s, n)
                if d != exp:
                    bad.append("read handle %d: wrong data" % hd)
    except Exception as ex:
        bad.append(repr(ex))
    out["bad"] = bad
    out["left"] = len(want)

def run(st, send):
    s = raw()
    out = {}
    th = threading.Thread(target=collect, args=(s, st, out))
    th.start()
    send(s, bytes(st.data))
    th.join(120)
    s.close()
    return not th.is_alive() and not out.get("bad") and out.get("left") == 0, out

def mixed_stream(region, count):
    """count pipelined writes (512 B to 64.5 KiB, overlapping) and flushes over
    [region, region + 2 MiB + 65 KiB).  Overlapping writes take effect in stream order (the
    server submits in order and cow/ orders conflicting requests): the model is the serial one.
    Reads go in a later stream (a read may pass an earlier write's reply)."""
    st = Stream()
    for i in range(count):
        if rng.randrange(10) < 8:
            n = rng.choice([512, 4096, 4096, 8192, 12288, 65536 + 512])
            st.write(region + rng.randrange(512) * 4096, rng.randbytes(n))
        else:
            st.flush()
    return st

# 1. one big send: ~600 pipelined requests (> the 256 KiB receive buffer, so headers and
#    payloads straddle recv boundaries at arbitrary places)
st = mixed_stream(1 << 20, 600)
ok, out = run(st, lambda s, d: s.sendall(d))
t(ok, "600 pipelined requests (%d bytes) in one send: every reply right %s" % (len(st.data), out.get("bad", "")[:2]))
rd = Stream()
for i in range(0, 2 << 20, 8192):
    rd.read((1 << 20) + i, 8192)
ok, out = run(rd, lambda s, d: s.sendall(d))
t(ok, "256 pipelined reads in one send return what the writes stored %s" % out.get("bad", "")[:2])

# 2. the same kind of stream cut into tiny pieces (1..40 bytes, some pauses)
def dribble(s, d):
    i = 0
    while i < len(d):
        k = rng.randrange(1, 41)
        s.sendall(d[i:i + k])
        i += k
        if rng.randrange(50) == 0:
            time.sleep(0.001)
st = mixed_stream(4 << 20, 120)
ok, out = run(st, dribble)
t(ok, "120 requests sent in 1..40-byte pieces %s" % out.get("bad", "")[:2])
rd = Stream()
for i in range(0, 2 << 20, 65536):
    rd.read((4 << 20) + i, 65536)
ok, out = run(rd, dribble)
t(ok, "32 reads of 64 KiB sent in pieces return the stored data %s" % out.get("bad", "")[:2])

# 3. writes larger than the receive buffer: 4 MiB right behind a small write in one send, and the
#    32 MiB maximum is beyond the device; 8 MiB with its header split from the payload
st = Stream()
st.write(7 << 20, rng.randbytes(4096))
st.write(8 << 20, rng.randbytes(4 << 20))
st.read(8 << 20, 4 << 20)
ok, out = run(st, lambda s, d: s.sendall(d))
t(ok, "4 MiB write behind a 4 KiB write in one send, read back %s" % out.get("bad", "")[:2])
st = Stream()
st.write(0, rng.randbytes(8 << 20))
def split_send(s, d):
    s.sendall(d[:20]); time.sleep(0.05); s.sendall(d[20:100]); time.sleep(0.05); s.sendall(d[100:])
ok, out = run(st, split_send)
rd = Stream(); rd.read(0, 8 << 20); rd.read(12 << 20, 4 << 20)
ok2, out2 = run(rd, lambda s, d: s.sendall(d))
t(ok and ok2, "8 MiB write, header split across sends, read back %s %s" % (out.get("bad", "")[:2], out2.get("bad", "")[:2]))

# 4. replies overflowing one send round: 128 structured reads in flight whose replies are each
#    64 chunks (alternating data and holes)
h = nbd.NBD()
h.connect_uri("nbd+unix:///ctr?socket=%s" % SOCK)
pat = bytearray()
for i in range(64):
    pat += (bytes([i + 1]) * 4096) if i % 2 == 0 else bytes(4096)
h.pwrite(bytes(pat), 14 << 20)
model[14 << 20:(14 << 20) + len(pat)] = pat
h.flush()
bufs = [nbd.Buffer(len(pat)) for _ in range(128)]
cookies = [h.aio_pread(bufs[i], 14 << 20) for i in range(128)]
while h.aio_in_flight() > 0:
    h.poll(-1)
t(all(b.to_bytearray() == pat for b in bufs), "128 reads in flight of 64 data/hole chunks each: all right")
bufs = [nbd.Buffer(512) for _ in range(600)]
cookies = [h.aio_pread(bufs[i], (1 << 20) + i * 512) for i in range(600)]
while h.aio_in_flight() > 0:
    h.poll(-1)
t(all(bufs[i].to_bytearray() == model[(1 << 20) + i * 512:(1 << 20) + (i + 1) * 512] for i in range(600)),
  "600 small reads in flight: all right")
h.shutdown()

# 5. many connections at once, each with its own pipelined writes, then reads, over its own area
NCONN = 32
res = [None] * NCONN
def worker(k):
    r = random.Random(k)
    base = (2 << 20) + k * 65536
    st = Stream()
    for i in range(16):
        st.write(base + i * 4096, r.randbytes(4096))
    st.flush()
    ok1, o1 = run(st, lambda s, d: s.sendall(d))
    rd = Stream()
    for i in range(16):
        rd.read(base + i * 4096, 4096)
    ok2, o2 = run(rd, lambda s, d: s.sendall(d))
    res[k] = ok1 and ok2
ths = [threading.Thread(target=worker, args=(k,)) for k in range(NCONN)]
for th in ths: th.start()
for th in ths: th.join(120)
t(all(res), "%d connections at once, pipelined writes and reads each: all right" % NCONN)

h = nbd.NBD()
h.connect_uri("nbd+unix:///ctr?socket=%s" % SOCK)
t(h.pread(SIZE, 0) == bytes(model), "whole device equals the model at the end")
h.shutdown()
