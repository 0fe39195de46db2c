# Protocol edge cases and hostile clients against `ociblk serve` (run by nbd-protocol.sh through
# nbdsh's python, which has the libnbd module).  Prints "PASS desc" / "FAIL desc" lines.
import errno, os, socket, struct, sys, threading, time
import nbd

SOCK = os.environ["SOCK"]
SIZE = 16 << 20
BASE = open(os.environ["BASE"], "rb").read()

def uri(name):
    return "nbd+unix:///%s?socket=%s" % (name, SOCK)

def t(cond, desc):
    print(("PASS " if cond else "FAIL ") + desc, flush=True)

def expect_err(fn, want, desc):
    try:
        fn()
        t(False, desc + " (no error)")
    except nbd.Error as e:
        t(e.errnum == want, "%s (got errno %s)" % (desc, e.errnum))

def conn(name, strict=True, structured=True, meta=True):
    h = nbd.NBD()
    if meta:
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    if not structured:
        h.set_request_structured_replies(False)
    h.connect_uri(uri(name))
    if not strict:
        h.set_strict_mode(0)
    return h

def extents(h, count, offset, flags=0):
    out = []
    def cb(meta, off, entries, err):
        out.append((meta, off, list(entries)))
        return 0
    h.block_status(count, offset, cb, flags)
    return out

# ---------------------------------------------------------------- libnbd: bad requests -------
h = conn("ctr", strict=False)
t(h.get_size() == SIZE and h.can_multi_conn() and not h.is_read_only(), "container: size, multi-conn, writable")
expect_err(lambda: h.pread(4096, SIZE), errno.EINVAL, "read beyond the end: EINVAL")
expect_err(lambda: h.pread(4096, SIZE - 2048), errno.EINVAL, "read straddling the end: EINVAL")
expect_err(lambda: h.pwrite(b"x" * 4096, SIZE - 512), errno.ENOSPC, "write beyond the end: ENOSPC")
expect_err(lambda: h.pread(0, 0), errno.EINVAL, "zero-length read: EINVAL")
expect_err(lambda: h.pwrite(b"", 0), errno.EINVAL, "zero-length write: EINVAL")
expect_err(lambda: h.pread(32 << 20 | 4096, 0), errno.EINVAL, "read over the 32 MiB maximum: EINVAL")
expect_err(lambda: extents(h, 8192, SIZE - 4096), errno.EINVAL, "block status beyond the end: EINVAL")
expect_err(lambda: h.pread(4096, 0, nbd.CMD_FLAG_REQ_ONE), errno.EINVAL, "flag not valid for the command: EINVAL")
t(h.pread(4096, 0) == BASE[:4096], "connection still usable after errors")

# ---------------------------------------------------------------- unaligned, FUA, zeroes, trim
h.pwrite(b"hello, world", 1001)
t(h.pread(12, 1001) == b"hello, world", "unaligned write and read")
t(h.pread(1001, 0) == BASE[:1001] and h.pread(3000, 1013) == BASE[1013:4013], "bytes around an unaligned write unchanged")
t(h.pread(5, 1003) == b"llo, ", "unaligned read inside a sector")
h.pwrite(b"\xaa" * 4096, 8192, nbd.CMD_FLAG_FUA)
t(h.pread(4096, 8192) == b"\xaa" * 4096, "FUA write")
h.pwrite(bytes(range(256)) * 256, 1 << 20)
h.zero(65536, 1 << 20)
t(h.pread(65536, 1 << 20) == bytes(65536), "write zeroes")
h.zero(8192, 2 << 20, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)
t(h.pread(8192, 2 << 20) == bytes(8192), "write zeroes with NO_HOLE and FUA")
h.zero(1000, (3 << 20) + 7)
t(h.pread(1000, (3 << 20) + 7) == bytes(1000) and h.pread(7, 3 << 20) == BASE[3 << 20:(3 << 20) + 7], "unaligned write zeroes")
h.trim(1 << 20, 5 << 20)
h.trim(65536 + 100, 6 << 20, nbd.CMD_FLAG_FUA)
h.flush()
t(h.pread(1 << 20, 5 << 20) == bytes(1 << 20), "trimmed range reads zero")
ex = extents(h, 1 << 20, 5 << 20)
t(len(ex) == 1 and ex[0][0] == nbd.CONTEXT_BASE_ALLOCATION and ex[0][2][1] == 3 and ex[0][2][0] == 1 << 20,
  "block status: trimmed MiB is one hole+zero extent")
ex = extents(h, 4 << 20, 0, nbd.CMD_FLAG_REQ_ONE)
t(len(ex) == 1 and len(ex[0][2]) == 2, "block status with REQ_ONE: one descriptor")
ex = extents(h, SIZE, 0)
tot = sum(ex[0][2][0::2])
t(0 < tot <= SIZE and all(l % 512 == 0 for l in ex[0][2][0::2]), "block status over the whole export: lengths within the request")
ex = extents(h, 1000, 500)
t(sum(ex[0][2][0::2]) == 1000, "unaligned block status covers exactly the request")

# structured read of a region with data and a hole: hole chunks are allowed, content must be right
kinds = []
def chunk(sub, off, status, err):
    kinds.append(status)
    return 0
buf = h.pread_structured(2 << 20, 4 << 20, chunk)
t(buf == BASE[4 << 20:5 << 20] + bytes(1 << 20), "structured read of data + hole returns the right bytes")
t(nbd.READ_HOLE in kinds and nbd.READ_DATA in kinds, "structured read sends OFFSET_DATA and OFFSET_HOLE chunks")
kinds.clear()
buf = h.pread_structured(65536, 5 << 20, chunk, nbd.CMD_FLAG_DF)
t(buf == bytes(65536) and kinds == [nbd.READ_DATA], "DF read: a single data chunk")

# simple replies (no structured negotiation)
s2 = conn("ctr", structured=False, meta=False, strict=False)
t(s2.pread(4096, 8192) == b"\xaa" * 4096 and not s2.can_df(), "simple replies: read")
expect_err(lambda: s2.pread(4096, SIZE), errno.EINVAL, "simple replies: error reply")
t(s2.pread(512, 0) == BASE[:512], "simple replies: usable after an error")
s2.shutdown()

# ---------------------------------------------------------------- read-only image --------------
r = conn("img", strict=False)
t(r.is_read_only() and r.can_multi_conn() and r.get_size() == SIZE, "image: read-only, multi-conn, size")
expect_err(lambda: r.pwrite(b"x" * 512, 0), errno.EPERM, "write to a read-only export: EPERM")
expect_err(lambda: r.trim(4096, 0), errno.EPERM, "trim on a read-only export: EPERM")
expect_err(lambda: r.zero(4096, 0), errno.EPERM, "write zeroes on a read-only export: EPERM")
t(r.pread(65536, 0) == BASE[:65536], "image reads its data")
r.flush()
t(True, "flush on a read-only export succeeds")

# ---------------------------------------------------------------- option haggling -----------
o = nbd.NBD()
o.set_opt_mode(True)
o.connect_uri(uri("nope"))
names = []
o.opt_list(lambda name, desc: names.append(name) or 0)
t(sorted(names) == ["ctr", "img"], "NBD_OPT_LIST lists the container and the image")
try:
    o.opt_go()
    t(False, "unknown export name refused")
except nbd.Error as e:
    t(True, "unknown export name refused (%s)" % e.string.strip())
o.set_export_name("img")
o.opt_info()
t(o.get_size() == SIZE and o.is_read_only(), "NBD_OPT_INFO on the image")
ctxs = []
o.opt_list_meta_context(lambda name: ctxs.append(name) or 0)
t(ctxs == [nbd.CONTEXT_BASE_ALLOCATION], "NBD_OPT_LIST_META_CONTEXT offers base:allocation")
o.set_export_name("ctr")
o.opt_go()
t(o.pread(4096, 8192) == b"\xaa" * 4096, "NBD_OPT_GO after failures")
o.shutdown()
o = nbd.NBD()
o.set_opt_mode(True)
o.connect_uri(uri("img"))
o.opt_abort()
t(True, "NBD_OPT_ABORT")

# ---------------------------------------------------------------- multi-conn, many in flight --
a = conn("ctr")
b = conn("ctr")
a.pwrite(b"\x5a" * 4096, 9 << 20)
b.flush()
t(b.pread(4096, 9 << 20) == b"\x5a" * 4096, "multi-conn: a write on one connection is read on another")
c = conn("ctr")
cookies = [c.aio_pwrite(bytes([i]) * 4096, (10 << 20) + i * 4096) for i in range(256)]
while c.aio_in_flight() > 0:
    c.poll(-1)
t(all(c.aio_command_completed(k) for k in cookies), "256 writes in flight complete")
t(all(c.pread(4096, (10 << 20) + i * 4096) == bytes([i]) * 4096 for i in range(0, 256, 17)), "and read back")

# ---------------------------------------------------------------- raw, hostile clients -------
MAGIC, OPTS, REQ = 0x4e42444d41474943, 0x49484156454f5054, 0x25609513

def recvall(s, n):
    out = b""
    while len(out) < n:
        d = s.recv(n - len(out))
        if not d:
            raise EOFError
        out += d
    return out

def raw(name=b"ctr", finish=True):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(SOCK)
    m, o2, hf = struct.unpack(">QQH", recvall(s, 18))
    assert m == MAGIC and o2 == OPTS and hf & 1
    if finish:
        s.sendall(struct.pack(">I", 3))
        s.sendall(struct.pack(">QII", OPTS, 1, len(name)) + name)
        size, fl = struct.unpack(">QH", recvall(s, 10))
        assert size == SIZE
    return s

def req(typ, off, length, handle=7, flags=0):
    return struct.pack(">IHHQQI", REQ, flags, typ, handle, off, length)

def simple_reply(s):
    m, err, hd = struct.unpack(">IIQ", recvall(s, 16))
    assert m == 0x67446698
    return err, hd

def closed(s):
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False

s = raw(); s.sendall(b"\x00" * 28)
t(closed(s), "garbage request header: connection closed")
s = raw(); s.sendall(req(1, 0, 64 << 20))
t(closed(s), "write announcing 64 MiB: connection closed")
s = raw(); s.sendall(req(99, 0, 4096, 11))
e1 = simple_reply(s)
s.sendall(req(0, 0, 512, 12)); e2 = simple_reply(s); d = recvall(s, 512)
t(e1 == (errno.EINVAL, 11) and e2 == (0, 12) and d == BASE[:512], "unknown command: EINVAL, connection usable")
s.sendall(req(0, 0, 512, 13, flags=0x8000)); e3 = simple_reply(s)
t(e3 == (errno.EINVAL, 13), "unknown command flag: EINVAL")
s.sendall(req(1, SIZE, 4096, 14) + b"\x77" * 4096)
e4 = simple_reply(s)
s.sendall(req(0, 0, 512, 15)); e5 = simple_reply(s); d = recvall(s, 512)
t(e4 == (errno.ENOSPC, 14) and e5 == (0, 15) and d == BASE[:512], "rejected write's payload is skipped, stream stays in sync")
s.sendall(req(1, 0, 4096, 16) + b"\x66" * 100)
s.close()
t(True, "disconnect in the middle of a write payload")
s = raw(finish=False); s.sendall(struct.pack(">I", 0xff))
t(closed(s), "unknown client flags: connection closed")
s = raw(finish=False); s.sendall(struct.pack(">I", 1) + struct.pack(">QII", OPTS, 7, 1 << 30))
t(closed(s), "option announcing 1 GiB: connection closed")
s = raw(finish=False); s.sendall(struct.pack(">I", 1) + struct.pack(">QII", OPTS, 99, 3) + b"abc")
m, opt, typ, ln = struct.unpack(">QIII", recvall(s, 20)); recvall(s, ln)
t(opt == 99 and typ == 0x80000001, "unknown option: NBD_REP_ERR_UNSUP")
s.sendall(struct.pack(">QII", OPTS, 7, 5) + b"\x00\x00\x00\x09x")
m, opt, typ, ln = struct.unpack(">QIII", recvall(s, 20)); recvall(s, ln)
t(typ == 0x80000003, "GO with a name length past the payload: NBD_REP_ERR_INVALID")
s.sendall(struct.pack(">QII", OPTS, 1, 4) + b"nope")
t(closed(s), "NBD_OPT_EXPORT_NAME of an unknown export: connection closed")
idle = raw(finish=False)   # connects and never speaks: must not block anyone

# a flood: 3000 reads in flight while a reader thread collects the replies
s = raw()
got = {}
def reader():
    try:
        for _ in range(3000):
            err, hd = simple_reply(s)
            got[hd] = err
            if err == 0:
                recvall(s, 4096)
    except Exception as ex:
        got["exc"] = repr(ex)
th = threading.Thread(target=reader); th.start()
s.sendall(b"".join(req(0, (i % 4096) * 4096, 4096, 1000 + i) for i in range(3000)))
th.join(60)
t(len(got) == 3000 and all(v == 0 for v in got.values()), "3000 pipelined reads all answered (%d)" % len(got))
s.close()
# a client that floods big reads and never reads a reply only blocks itself
hog = raw()
hog.setblocking(False)
try:
    for i in range(64):
        hog.send(req(0, 0, 8 << 20, i))
except BlockingIOError:
    pass
time.sleep(0.3)
v = conn("ctr")
v.pwrite(b"\x42" * 4096, 11 << 20)
v.flush()
t(v.pread(4096, 11 << 20) == b"\x42" * 4096, "others are served while a client does not read its replies")
hog.close(); idle.close()
v.shutdown()
t(conn("ctr").pread(4096, 9 << 20) == b"\x5a" * 4096, "server alive, earlier flushed data intact")
