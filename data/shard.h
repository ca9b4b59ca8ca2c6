// LMDB shards of Sample records, and their index (../shared/research/data-pipeline.md §2).
//
// A shard directory holds
//   <prefix>-00000, <prefix>-00001, ...   one LMDB environment per file (MDB_NOSUBDIR), each a single
//                                         unnamed database: key = the record's number in the shard
//                                         as 10 zero-padded decimal digits ("0000000000", ...), value
//                                         = a serialized bvllm.data.Sample (data/sample.proto)
//   index.json                            {"format": "bvllm-shards", "version": 1,
//                                          "shards": [{"file": "shard-00000", "samples": 812,
//                                                      "bytes": 1073123328}, ...]}
//   .<prefix>.lock, .index.lock           flock(2) files: one writer per prefix, index updates
// A shard is complete, and immutable, once it is listed in index.json: the writer lists it only
// after its last commit and after closing it. index.json lists shards sorted by file name, and
// that is the readers' order. Several writers (one per prefix: bvllm_prep's --part/--parts) may
// share a directory: each updates index.json under the lock, by read-modify-write, and replaces
// it atomically (a temporary file renamed over it).
//
// Crash safety: LMDB commits are durable (fsync) and atomic, so a writer killed mid-shard leaves
// a valid file holding every committed batch but not listed in the index. The next ShardWriter of
// the same prefix adopts such files: it lists them in the index with the records they hold
// (dropping files with none), and starts a new shard after them. Records in the uncommitted
// batch are lost, and the caller writes them again (bvllm_prep skips ids the index already has).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/sample.pb.h"

namespace bvllm::data {

namespace detail {
class FileLock;  // flock(2) held while alive
}

struct ShardWriterOptions {
  int64_t max_shard_bytes = int64_t{1} << 30;     // a new shard starts before one would exceed this
  int batch = 128;                                // records per write transaction (at most)
  int64_t batch_bytes = int64_t{64} << 20;        // ... and serialized bytes per transaction (at most)
  int64_t initial_map_bytes = int64_t{64} << 20;  // LMDB map size to start with; doubled on MDB_MAP_FULL
  std::string prefix = "shard";                   // shard files are <prefix>-NNNNN
};

struct ShardInfo {
  std::string file;     // name inside the directory
  int64_t samples = 0;  // records in the shard
  int64_t bytes = 0;    // file size
};

struct ShardIndex {
  std::vector<ShardInfo> shards;  // sorted by file name
  int64_t samples() const;        // in all shards
};

// dir/index.json. Throws bvllm::Error when it is missing ("not a shard directory, or no shard
// finished yet") or malformed (naming the field).
ShardIndex read_index(const std::string& dir);
// Whether dir/index.json exists.
bool has_index(const std::string& dir);

// Writes Samples into shards of one prefix. One writer per prefix at a time, across processes: a
// second one fails (the prefix lock is held). Not thread-safe: one thread calls add().
class ShardWriter {
 public:
  // Creates `dir` if needed, takes the prefix lock and adopts the prefix's unlisted shards (see
  // the crash-safety note above).
  ShardWriter(const std::string& dir, ShardWriterOptions options = {});
  ~ShardWriter();  // finish(); errors are logged, not thrown
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  // Queues the record; a full batch is committed in one transaction. When the map is full
  // (MDB_MAP_FULL from a put or from the commit) the transaction is aborted, the map doubled and
  // the whole batch written again: no record is lost or written twice.
  void add(const Sample& sample);
  // Commits the pending batch (durable on return). add() calls it when the batch is full.
  void flush();
  // Commits, closes the current shard and lists it in the index. Idempotent; add() after it
  // starts a new shard.
  void finish();

  // Records added so far, committed or not (this writer only).
  int64_t added() const { return added_; }
  // Shards this writer listed in the index so far, adopted ones included.
  const std::vector<ShardInfo>& written() const { return written_; }
  // Shards adopted at construction.
  const std::vector<ShardInfo>& adopted() const { return adopted_; }

 private:
  struct Open;  // the current shard: LMDB env, dbi, counts
  void open_next();
  void commit(std::vector<std::string>& batch, size_t begin, size_t end);

  std::string dir_;
  ShardWriterOptions options_;
  std::unique_ptr<detail::FileLock> lock_;
  int next_number_ = 0;
  std::unique_ptr<Open> open_;
  std::vector<std::string> pending_;  // serialized, not yet committed
  int64_t pending_bytes_ = 0;
  int64_t added_ = 0;
  std::vector<ShardInfo> written_;
  std::vector<ShardInfo> adopted_;
};

// Reads every shard listed in dir/index.json. Environments open with MDB_RDONLY | MDB_NOSUBDIR |
// MDB_NOLOCK | MDB_NOTLS (shards are immutable; no lock file is needed or written) and without
// MDB_NORDAHEAD, which made cold reads 25x slower (data-pipeline.md §2.3). LMDB environments must
// not cross fork(): open the reader after forking or MPI_Init, one per process.
// get() and ids() may be called from several threads at once.
class ShardReader {
 public:
  explicit ShardReader(const std::string& dir);
  ~ShardReader();
  ShardReader(ShardReader&&) noexcept;
  ShardReader& operator=(ShardReader&&) noexcept;

  const ShardIndex& index() const { return index_; }
  int64_t size() const;  // samples in all shards
  // Sample `global_index` in [0, size()): shards in index order, records in key order.
  Sample get(int64_t global_index) const;
  // Every sample's id in get() order (reads only the id field of each record).
  std::vector<std::string> ids() const;

 private:
  struct Env;
  std::string dir_;
  ShardIndex index_;
  std::vector<std::unique_ptr<Env>> envs_;
  std::vector<int64_t> starts_;  // global index of each shard's first record
};

// The LMDB key of record `n` in a shard: n as 10 zero-padded decimal digits.
std::string shard_key(int64_t n);

}  // namespace bvllm::data
