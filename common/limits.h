/* Every limit ociblk enforces on outside input, each with the reason for its value.
 * Each module owns one section below; add a limit to your module's section only. */
#ifndef OCIBLK_COMMON_LIMITS_H
#define OCIBLK_COMMON_LIMITS_H

/* ---- common ---- */
/* Names of images and containers become file names (percent-encoded): keep them well under NAME_MAX. */
#define OCIBLK_NAME_MAX 128
/* A store path plus record names must fit a path buffer. */
#define OCIBLK_PATH_MAX 4096

/* ---- layer-store ---- */
/* blkif speaks 512-byte sectors, cow/ 4 KiB blocks; layers store whole 4 KiB blocks. */
#define LAYER_BLOCK_SIZE 4096u
#define LAYER_SECTOR_SIZE 512u
/* 64 KiB chunks: big enough for zstd to compress well, small enough that a random 4 KiB read
 * decompresses at most 16 blocks. */
#define LAYER_CHUNK_BLOCKS_DEFAULT 16u
/* No chunk spans more than 1 MiB of virtual data, so one read never needs a bigger buffer. */
#define LAYER_CHUNK_BLOCKS_MAX 256u
/* 16 TiB virtual size: far above any container root disk, keeps block indexes in 32 bits. */
#define LAYER_VIRTUAL_SIZE_MAX (16ull << 40)
/* Extents per layer file: 16M entries * 40 bytes = 640 MiB of on-disk index (and as much in
 * memory once parsed) is the most we will read; a 16 TiB layer of 1 MiB chunks needs 16M. */
#define LAYER_EXTENTS_MAX (16u << 20)
/* Layers in one chain: deep enough for any OCI image (Docker caps at 127) plus commits. */
#define LAYER_CHAIN_MAX 128u
/* Records are small JSON files; anything bigger is not ours. */
#define LAYER_RECORD_BYTES_MAX (1u << 20)
/* Free-form JSON attached to an image record (OCI config digest, chain ids, history). */
#define LAYER_IMAGE_EXTRA_BYTES_MAX (256u << 10)

/* ---- cow ---- */
/* Requests in flight per queue: matches the deepest blkif ring (32 slots * 2^4 pages) and NBD use. */
#define COW_QUEUE_DEPTH_MAX 1024u
/* One request never moves more than 32 MiB (NBD's largest sane request; blkif is far below). */
#define COW_REQUEST_BYTES_MAX (32u << 20)
/* Default journal limit of a device (cow_device_set_journal_limit): the journal is compacted into
 * a snapshot at a checkpoint past half of this or of COW_JOURNAL_PAYLOAD_BYTES_MAX, the lower;
 * also bounds how much of upper.map open reads. */
#define COW_JOURNAL_BYTES_MAX (64u << 20)
/* iovec entries per request: the kernel's UIO_MAXIOV. */
#define COW_IOV_MAX 1024u
/* State changes waiting for a flush (16 bytes each): past this a device flushes on its own, so a
 * guest that never flushes cannot grow them without bound. */
#define COW_PENDING_CHANGES_MAX (1u << 20)
/* Blocks whose content one flush writes into its journal record instead of syncing upper.data
 * (a write-ahead log with data): a QD1 write+flush then costs one sync, like a raw file.  Kept
 * per container (4 KiB each, preallocated at open); more blocks written between two flushes make
 * that flush sync upper.data instead, which is cheaper for big writes anyway. */
#define COW_FLUSH_PAYLOAD_BLOCKS_MAX 64u
/* Journal bytes (payloads included) past which flushes sync upper.data and the journal is
 * compacted: bounds upper.map's size (overlay space) and the replay at open; compaction costs a
 * few ms once per ~500 single-block flushes. */
#define COW_JOURNAL_PAYLOAD_BYTES_MAX (2u << 20)
/* Stored-chunk buffers per queue for reads from layers through io_uring (each as big as the
 * chain's largest stored chunk, 64 KiB by default): enough to keep a disk busy. */
#define COW_QUEUE_CHUNK_BUFFERS 16u

/* ---- image-import ---- */
/* Manifests, indexes and configs: registries cap manifests at 4 MiB; configs with long histories
 * stay far below 8 MiB.  Anything bigger is not an image we want to hold in memory. */
#define IMAGE_IMPORT_JSON_BYTES_MAX (8u << 20)
/* JSON nesting: real documents nest < 10 deep; json-c recurses, so bound it. */
#define IMAGE_IMPORT_JSON_DEPTH_MAX 32
/* Layers of one image: Docker caps at 127; leave room in LAYER_CHAIN_MAX for commits. */
#define IMAGE_IMPORT_LAYERS_MAX 127u
/* Descriptors in one index and images in one docker-archive manifest.json. */
#define IMAGE_IMPORT_INDEX_ENTRIES_MAX 1024u
/* One blob (compressed layer): 64 GiB is beyond any real layer, and keeps sizes well inside int64. */
#define IMAGE_IMPORT_BLOB_BYTES_MAX (64ull << 30)
/* One uncompressed layer tar: 256 GiB; a decompression bomb stops here instead of hashing forever. */
#define IMAGE_IMPORT_LAYER_TAR_BYTES_MAX (256ull << 30)
/* Entries in one layer tar, checked in the verify pass: ten times the largest distribution images. */
#define IMAGE_IMPORT_LAYER_ENTRIES_MAX (4u << 20)
/* Members of an oci-archive / docker-archive tar, and the length of one member name. */
#define IMAGE_IMPORT_ARCHIVE_MEMBERS_MAX 65536u
#define IMAGE_IMPORT_ARCHIVE_NAME_MAX 1024u
/* Symlink hops when resolving a docker-archive member (legacy saves link duplicate layers). */
#define IMAGE_IMPORT_SYMLINK_HOPS_MAX 8u
/* Smallest device an image can be imported to (ext4 with a journal needs a few MiB). */
#define IMAGE_IMPORT_SIZE_MIN_BYTES (64ull << 20)
/* A tar entry's path and a hard link's target: Linux's PATH_MAX. */
#define IMAGE_IMPORT_PATH_BYTES_MAX 4096u
/* A symlink target: ext4 keeps it in one 4 KiB block with its NUL. */
#define IMAGE_IMPORT_SYMLINK_BYTES_MAX 4095u
/* xattrs of one entry, and one value: everything must fit the inode plus one 4 KiB xattr block
 * (no ea_inode feature), so larger values could never be stored anyway. */
#define IMAGE_IMPORT_XATTRS_PER_ENTRY_MAX 256u
#define IMAGE_IMPORT_XATTR_VALUE_BYTES_MAX 4000u
/* A regular file: ext4's limit with 4 KiB blocks (2^32 blocks). */
#define IMAGE_IMPORT_FILE_BYTES_MAX ((16ull << 40) - 4096)

/* ---- nbd ---- */
/* Largest READ/WRITE we serve (advertised as the maximum block size): what cow/ takes in one
 * request.  A WRITE header announcing more is a lie we do not read: the connection is closed. */
#define NBD_REQUEST_BYTES_MAX COW_REQUEST_BYTES_MAX
/* Requests in flight per connection (its cow_queue depth): enough to keep a disk busy, bounded so
 * a flood only fills its own connection's slots; further requests wait in the socket (TCP
 * back-pressure). */
#define NBD_INFLIGHT_MAX 128u
/* Buffer bytes in flight per connection: a new request is read only below this, so a client can
 * pin at most this plus one NBD_REQUEST_BYTES_MAX request of server memory. */
#define NBD_INFLIGHT_BYTES_MAX (64u << 20)
/* Payload buffers kept by a connection's idle slots (a stream of big requests then reuses them
 * instead of allocating per request); buffers up to 256 KiB are always kept. */
#define NBD_KEPT_BUFFER_BYTES_MAX (16u << 20)
/* Receive buffer per connection: one recv takes in many pipelined requests (32 4 KiB writes are
 * 132 KiB).  A WRITE payload longer than NBD_RECV_DIRECT_MIN_BYTES left to read goes straight
 * into its own buffer instead. */
#define NBD_RECV_BUFFER_BYTES (256u << 10)
#define NBD_RECV_DIRECT_MIN_BYTES (64u << 10)
/* Replies gathered per loop round and sent with one sendmsg: bytes copied (headers, errors, block
 * status: at most 4 + 8 * NBD_BLOCK_STATUS_EXTENTS_MAX + 20) and iovecs (below IOV_MAX). */
#define NBD_SEND_BUFFER_BYTES (64u << 10)
#define NBD_SEND_IOVECS_MAX 256u
/* Option payloads: export names are at most 4096 bytes by the protocol, meta-context queries a
 * few; anything longer is not a real client and the connection is closed. */
#define NBD_OPTION_BYTES_MAX (64u << 10)
/* Options per handshake before we give up on the client. */
#define NBD_OPTIONS_MAX 4096u
/* Meta-context queries in one LIST/SET_META_CONTEXT option. */
#define NBD_META_QUERIES_MAX 64u
/* Protocol strings (export names, queries) are at most 4096 bytes. */
#define NBD_STRING_BYTES_MAX 4096u
/* Block status descriptors in one reply (the client asks again for the rest). */
#define NBD_BLOCK_STATUS_EXTENTS_MAX 2048u
/* Connections served at once (one thread each); further ones are closed at once. */
#define NBD_CONNECTIONS_MAX 256u
/* A client must finish the handshake within this many seconds, and a reply that cannot be sent
 * for this long (client not reading) closes the connection. */
#define NBD_HANDSHAKE_TIMEOUT_SECONDS 60
#define NBD_SEND_TIMEOUT_SECONDS 60

/* ---- blkback ---- */
/* Ring of 2^4 pages, as Linux blkback's xen_blkif_max_ring_order: 512 slots for x86_64. */
#define BLKBACK_RING_PAGE_ORDER_MAX 4u
/* Queues (rings) per device: each is a thread + io_uring; more than 2-4 buys nothing here. */
#define BLKBACK_QUEUES_MAX 4u
/* Segments of an indirect request: Linux's MAX_INDIRECT_SEGMENTS (8 indirect pages' worth is far
 * more; 256 * 4 KiB = 1 MiB per request bounds the bounce buffers). */
#define BLKBACK_INDIRECT_SEGS_MAX 256u
/* What we advertise by default: Linux blkfront's default max_indirect_segments. */
#define BLKBACK_INDIRECT_SEGS_DEFAULT 32u
/* Requests in flight per queue: the preallocated pool (requests beyond wait on the ring). */
#define BLKBACK_INFLIGHT_PER_QUEUE 64u
/* Persistent grants kept mapped per queue: Linux blkback's max_persistent_grants default. */
#define BLKBACK_PERSISTENT_GRANTS_MAX 1056u
/* Devices the daemon serves at once (one process each). */
#define BLKBACK_DEVICES_MAX 256u
/* Restarts of a crashed device process before the daemon gives up on that device. */
#define BLKBACK_DEVICE_RESTARTS_MAX 5u
/* A connected device rewrites its changed counters under <backend>/statistics/ at most this
 * often: a few xenstore writes per second per device, fresh enough for a person or a monitor. */
#define BLKBACK_STATS_INTERVAL_MS 1000u

#endif
