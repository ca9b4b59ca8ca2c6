#include "data/shard.h"

#include <fcntl.h>
#include <glog/logging.h>
#include <google/protobuf/io/coded_stream.h>
#include <lmdb.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "runtime/error.h"

namespace bvllm::data {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr int kIndexVersion = 1;
constexpr const char* kIndexFormat = "bvllm-shards";

// Every LMDB call goes through this: a failure names the file, the call and where it was made.
[[noreturn]] void lmdb_fail(int rc, const char* call, const std::string& path, const char* file, int line) {
  throw Error(str_cat(path, ": ", call, " failed: ", mdb_strerror(rc), " (", file, ":", line, ")"));
}
#define BVLLM_MDB_CHECK(call, path)                                                            \
  do {                                                                                         \
    const int bvllm_mdb_rc = (call);                                                           \
    if (bvllm_mdb_rc != MDB_SUCCESS) lmdb_fail(bvllm_mdb_rc, #call, path, __FILE__, __LINE__); \
  } while (0)

std::string errno_text() { return std::strerror(errno); }

struct EnvCloser {
  void operator()(MDB_env* env) const { mdb_env_close(env); }
};
using EnvPtr = std::unique_ptr<MDB_env, EnvCloser>;

// MDB_NOSUBDIR: the path is the data file. The database handle (dbi) of the single unnamed
// database is opened once per environment and lives as long as it: mdb_env_close releases it
// (lmdb.h: mdb_dbi_close is "normally unnecessary").
EnvPtr open_env(const std::string& path, unsigned flags, size_t map_bytes) {
  MDB_env* raw = nullptr;
  BVLLM_MDB_CHECK(mdb_env_create(&raw), path);
  EnvPtr env(raw);
  if (map_bytes > 0) BVLLM_MDB_CHECK(mdb_env_set_mapsize(env.get(), map_bytes), path);
  BVLLM_MDB_CHECK(mdb_env_open(env.get(), path.c_str(), flags | MDB_NOSUBDIR, 0644), path);
  return env;
}

// A transaction: aborted when it goes out of scope uncommitted.
class Txn {
 public:
  Txn(MDB_env* env, unsigned flags, const std::string& path) : path_(path) {
    BVLLM_MDB_CHECK(mdb_txn_begin(env, nullptr, flags, &txn_), path_);
  }
  ~Txn() { abort(); }
  Txn(const Txn&) = delete;
  Txn& operator=(const Txn&) = delete;
  MDB_txn* get() const { return txn_; }
  // mdb_txn_commit frees the handle even when it fails (lmdb.h), so it is dropped first.
  int commit_rc() {
    MDB_txn* txn = std::exchange(txn_, nullptr);
    return mdb_txn_commit(txn);
  }
  void abort() {
    if (txn_ != nullptr) mdb_txn_abort(std::exchange(txn_, nullptr));
  }

 private:
  const std::string& path_;
  MDB_txn* txn_ = nullptr;
};
#define BVLLM_MDB_COMMIT(txn, path) BVLLM_MDB_CHECK((txn).commit_rc(), path)

class Cursor {
 public:
  Cursor(const Txn& txn, MDB_dbi dbi, const std::string& path) {
    BVLLM_MDB_CHECK(mdb_cursor_open(txn.get(), dbi, &cursor_), path);
  }
  ~Cursor() { mdb_cursor_close(cursor_); }
  Cursor(const Cursor&) = delete;
  Cursor& operator=(const Cursor&) = delete;
  MDB_cursor* get() const { return cursor_; }

 private:
  MDB_cursor* cursor_ = nullptr;
};

MDB_dbi open_dbi(MDB_env* env, unsigned txn_flags, const std::string& path) {
  Txn txn(env, txn_flags, path);
  MDB_dbi dbi = 0;
  BVLLM_MDB_CHECK(mdb_dbi_open(txn.get(), nullptr, 0, &dbi), path);
  BVLLM_MDB_COMMIT(txn, path);  // also for read-only txns: an aborted txn would close the handle
  return dbi;
}

int64_t entries(MDB_env* env, MDB_dbi dbi, unsigned txn_flags, const std::string& path) {
  Txn txn(env, txn_flags, path);
  MDB_stat stat;
  BVLLM_MDB_CHECK(mdb_stat(txn.get(), dbi, &stat), path);
  return static_cast<int64_t>(stat.ms_entries);
}

// The key of the last record, or "" for an empty database.
std::string last_key(MDB_env* env, MDB_dbi dbi, unsigned txn_flags, const std::string& path) {
  Txn txn(env, txn_flags, path);
  Cursor cursor(txn, dbi, path);
  MDB_val key, value;
  const int rc = mdb_cursor_get(cursor.get(), &key, &value, MDB_LAST);
  if (rc == MDB_NOTFOUND) return "";
  BVLLM_MDB_CHECK(rc, path);
  return std::string(static_cast<const char*>(key.mv_data), key.mv_size);
}

}  // namespace

namespace detail {
// An open file descriptor holding flock(LOCK_EX) until destroyed.
class FileLock {
 public:
  FileLock(const std::string& path, bool wait) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    BVLLM_REQUIRE(fd_ >= 0, path, ": cannot create the lock file: ", errno_text());
    while (::flock(fd_, LOCK_EX | (wait ? 0 : LOCK_NB)) != 0) {
      if (errno == EINTR) continue;
      const int error = errno;
      ::close(fd_);
      fd_ = -1;
      BVLLM_REQUIRE(error != EWOULDBLOCK, path, ": locked by another process");
      throw Error(str_cat(path, ": flock failed: ", std::strerror(error)));
    }
  }
  ~FileLock() {
    if (fd_ >= 0) ::close(fd_);  // releases the lock
  }
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  std::string path_;
  int fd_ = -1;
};

}  // namespace detail

using detail::FileLock;

namespace {

void write_all(const std::string& path, int fd, const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    BVLLM_REQUIRE(n >= 0, path, ": write failed: ", errno_text());
    done += static_cast<size_t>(n);
  }
}

void fsync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // best effort: the rename itself is atomic
  ::fsync(fd);
  ::close(fd);
}

// Writes `text` to a temporary file beside `path`, flushes it and renames it over `path`: readers
// see the old or the new file, never a part of one.
void write_file_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = str_cat(path, ".tmp.", ::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  BVLLM_REQUIRE(fd >= 0, tmp, ": cannot create: ", errno_text());
  try {
    write_all(tmp, fd, text);
    BVLLM_REQUIRE(::fsync(fd) == 0, tmp, ": fsync failed: ", errno_text());
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  const int closed = ::close(fd);
  if (closed != 0 || ::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string error = errno_text();
    ::unlink(tmp.c_str());
    throw Error(str_cat(path, ": cannot replace it with ", tmp, ": ", error));
  }
  fsync_dir(fs::path(path).parent_path().string());
}

std::string index_path(const std::string& dir) { return (fs::path(dir) / "index.json").string(); }

std::string index_text(const ShardIndex& index) {
  json shards = json::array();
  for (const ShardInfo& info : index.shards)
    shards.push_back({{"file", info.file}, {"samples", info.samples}, {"bytes", info.bytes}});
  return json{{"format", kIndexFormat}, {"version", kIndexVersion}, {"shards", shards}}.dump(1) + "\n";
}

// Adds (or replaces, by file name) `shards` in dir/index.json under the index lock.
void update_index(const std::string& dir, const std::vector<ShardInfo>& shards) {
  if (shards.empty()) return;
  FileLock lock((fs::path(dir) / ".index.lock").string(), /*wait=*/true);
  std::map<std::string, ShardInfo> by_file;
  if (has_index(dir))
    for (ShardInfo& info : read_index(dir).shards) by_file[info.file] = std::move(info);
  for (const ShardInfo& info : shards) by_file[info.file] = info;
  ShardIndex index;
  for (auto& [file, info] : by_file) index.shards.push_back(std::move(info));
  write_file_atomically(index_path(dir), index_text(index));
}

// The file names <prefix>-NNNNN (exactly five digits) in `dir`, with their numbers.
std::map<int, std::string> shard_files(const std::string& dir, const std::string& prefix) {
  std::map<int, std::string> files;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.size() != prefix.size() + 6 || !name.starts_with(prefix) || name[prefix.size()] != '-') continue;
    const std::string digits = name.substr(prefix.size() + 1);
    if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) continue;
    files[std::stoi(digits)] = name;
  }
  return files;
}

// Bytes a record takes in the file, roughly: LMDB stores a value that does not fit half a page in
// overflow pages of its own (a whole number of pages), a small one inline in a leaf page.
int64_t record_file_bytes(int64_t value_bytes, int64_t page_bytes) {
  constexpr int64_t kKeyAndNodeHeader = 10 + 8 + 2;
  if (value_bytes + kKeyAndNodeHeader <= page_bytes / 2 - 16) return value_bytes + kKeyAndNodeHeader;
  const int64_t pages = (value_bytes + 16 + page_bytes - 1) / page_bytes;
  return pages * page_bytes + kKeyAndNodeHeader;
}

const json& field(const json& object, const char* name, const std::string& where) {
  const auto it = object.find(name);
  BVLLM_REQUIRE(it != object.end(), where, ": no \"", name, "\"");
  return *it;
}

int64_t count_field(const json& object, const char* name, const std::string& where) {
  const json& value = field(object, name, where);
  BVLLM_REQUIRE(value.is_number_integer() && value.get<int64_t>() >= 0, where, ": \"", name,
                "\" must be a non-negative integer, got ", value.dump());
  return value.get<int64_t>();
}

// Raises the soft limit on open files to the hard one when `files` more are needed: a reader
// keeps one descriptor per shard.
void ensure_open_files(size_t files) {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return;
  if (limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < files + 64 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &limit);
  }
}

}  // namespace

std::string shard_key(int64_t n) {
  CHECK_GE(n, 0);
  CHECK_LT(n, int64_t{10000000000});
  char key[16];
  std::snprintf(key, sizeof(key), "%010lld", static_cast<long long>(n));
  return key;
}

// --- index ----------------------------------------------------------------------------------------

int64_t ShardIndex::samples() const {
  int64_t n = 0;
  for (const ShardInfo& info : shards) n += info.samples;
  return n;
}

bool has_index(const std::string& dir) { return fs::exists(index_path(dir)); }

ShardIndex read_index(const std::string& dir) {
  const std::string path = index_path(dir);
  std::ifstream in(path, std::ios::binary);
  BVLLM_REQUIRE(in, path, ": cannot open (not a shard directory, or bvllm_prep has not finished a shard yet)");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  json root;
  try {
    root = json::parse(text);
  } catch (const json::parse_error& e) {
    throw Error(str_cat(path, ": invalid JSON: ", e.what()));
  }
  BVLLM_REQUIRE(root.is_object(), path, ": expected a JSON object");
  const json& format = field(root, "format", path);
  BVLLM_REQUIRE(format == kIndexFormat, path, ": \"format\" must be \"", kIndexFormat, "\", got ", format.dump());
  const json& version = field(root, "version", path);
  BVLLM_REQUIRE(version == kIndexVersion, path, ": \"version\" ", version.dump(), " is not supported (expected ",
                kIndexVersion, ")");
  const json& shards = field(root, "shards", path);
  BVLLM_REQUIRE(shards.is_array(), path, ": \"shards\" must be an array");
  ShardIndex index;
  std::set<std::string> seen;
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string where = str_cat(path, ": shards[", i, "]");
    BVLLM_REQUIRE(shards[i].is_object(), where, ": expected an object");
    const json& file = field(shards[i], "file", where);
    BVLLM_REQUIRE(file.is_string(), where, ": \"file\" must be a string");
    ShardInfo info{file.get<std::string>(), count_field(shards[i], "samples", where),
                   count_field(shards[i], "bytes", where)};
    BVLLM_REQUIRE(
        !info.file.empty() && info.file != "." && info.file != ".." && info.file.find('/') == std::string::npos, where,
        ": \"file\" must be a file name in the directory, got \"", info.file, "\"");
    BVLLM_REQUIRE(seen.insert(info.file).second, where, ": \"", info.file, "\" is listed twice");
    index.shards.push_back(std::move(info));
  }
  return index;
}

// --- writer ---------------------------------------------------------------------------------------

struct ShardWriter::Open {
  std::string file, path;
  EnvPtr env;
  MDB_dbi dbi = 0;
  size_t map_bytes = 0;
  int64_t page_bytes = 4096;
  int64_t count = 0;  // committed records
  int64_t bytes = 0;  // estimated file bytes of the committed records
};

// The writer's environments: MDB_NOLOCK, since the prefix lock already makes this process the
// only one touching these files, and no reader opens a shard before it is listed in the index.
// Commits keep LMDB's default fsync: resuming trusts every committed batch.
constexpr unsigned kWriterFlags = MDB_NOLOCK;

ShardWriter::ShardWriter(const std::string& dir, ShardWriterOptions options) : dir_(dir), options_(std::move(options)) {
  BVLLM_REQUIRE(options_.max_shard_bytes > 0, "ShardWriter: max_shard_bytes must be positive, got ",
                options_.max_shard_bytes);
  BVLLM_REQUIRE(options_.batch > 0, "ShardWriter: batch must be positive, got ", options_.batch);
  BVLLM_REQUIRE(options_.batch_bytes > 0, "ShardWriter: batch_bytes must be positive");
  BVLLM_REQUIRE(options_.initial_map_bytes >= (1 << 16), "ShardWriter: initial_map_bytes must be at least 64 KiB");
  BVLLM_REQUIRE(!options_.prefix.empty() && options_.prefix.find('/') == std::string::npos && options_.prefix[0] != '.',
                "ShardWriter: prefix must be a plain file name, got \"", options_.prefix, "\"");
  std::error_code error;
  fs::create_directories(dir_, error);
  BVLLM_REQUIRE(!error && fs::is_directory(dir_), dir_, ": cannot create the shard directory: ", error.message());
  try {
    lock_ = std::make_unique<FileLock>((fs::path(dir_) / ("." + options_.prefix + ".lock")).string(), false);
  } catch (const Error& e) {
    throw Error(str_cat(e.what(), ": another writer is writing ", options_.prefix, "-* shards in ", dir_,
                        " (is another bvllm_prep with the same output and part still running?)"));
  }

  std::set<std::string> listed;
  if (has_index(dir_))
    for (const ShardInfo& info : read_index(dir_).shards) listed.insert(info.file);
  for (const auto& [number, file] : shard_files(dir_, options_.prefix)) {
    next_number_ = std::max(next_number_, number + 1);
    if (listed.count(file) != 0) continue;
    // A shard from a writer that never finished it: keep what it committed.
    const std::string path = (fs::path(dir_) / file).string();
    int64_t count = 0;
    try {
      EnvPtr env = open_env(path, kWriterFlags, 0);
      const MDB_dbi dbi = open_dbi(env.get(), 0, path);
      count = entries(env.get(), dbi, 0, path);
      const std::string last = last_key(env.get(), dbi, 0, path);
      BVLLM_REQUIRE(count == 0 || last == shard_key(count - 1), path, ": holds ", count,
                    " records but the last key is \"", last, "\" (expected ", shard_key(count - 1), ")");
    } catch (const Error& e) {
      throw Error(str_cat(e.what(),
                          "; this unfinished shard cannot be recovered: move it away (its samples are then "
                          "written again)"));
    }
    if (count == 0) {
      fs::remove(path);
      continue;
    }
    adopted_.push_back({file, count, static_cast<int64_t>(fs::file_size(path))});
  }
  update_index(dir_, adopted_);
  written_ = adopted_;
}

ShardWriter::~ShardWriter() {
  try {
    finish();
  } catch (const std::exception& e) {
    LOG(ERROR) << "ShardWriter: " << e.what();
  }
}

void ShardWriter::open_next() {
  BVLLM_REQUIRE(next_number_ <= 99999, dir_, ": ", options_.prefix,
                "-99999 is the last shard name; raise max_shard_bytes or use another prefix");
  auto open = std::make_unique<Open>();
  char number[16];
  std::snprintf(number, sizeof(number), "%05d", next_number_++);
  open->file = options_.prefix + "-" + number;
  open->path = (fs::path(dir_) / open->file).string();
  BVLLM_REQUIRE(!fs::exists(open->path), open->path, ": exists already (another writer with the same prefix?)");
  open->map_bytes = static_cast<size_t>(options_.initial_map_bytes);
  open->env = open_env(open->path, kWriterFlags, open->map_bytes);
  MDB_stat stat;
  BVLLM_MDB_CHECK(mdb_env_stat(open->env.get(), &stat), open->path);
  open->page_bytes = stat.ms_psize;
  open->dbi = open_dbi(open->env.get(), 0, open->path);
  open_ = std::move(open);
}

void ShardWriter::add(const Sample& sample) {
  std::string bytes;
  BVLLM_REQUIRE(sample.SerializeToString(&bytes), "ShardWriter: cannot serialize sample \"", sample.id(),
                "\" (a protobuf message is limited to 2 GiB)");
  if (open_ == nullptr) {
    open_next();
  } else {
    int64_t pending = 0;
    for (const std::string& record : pending_) pending += record_file_bytes(record.size(), open_->page_bytes);
    const int64_t size = record_file_bytes(bytes.size(), open_->page_bytes);
    if (open_->count + static_cast<int64_t>(pending_.size()) > 0 &&
        open_->bytes + pending + size > options_.max_shard_bytes) {
      finish();
      open_next();
    }
  }
  pending_bytes_ += static_cast<int64_t>(bytes.size());
  pending_.push_back(std::move(bytes));
  ++added_;
  if (static_cast<int64_t>(pending_.size()) >= options_.batch || pending_bytes_ >= options_.batch_bytes) flush();
}

void ShardWriter::flush() {
  if (pending_.empty()) return;
  CHECK(open_ != nullptr);
  commit(pending_, 0, pending_.size());
  pending_.clear();
  pending_bytes_ = 0;
}

// Writes records [begin, end) of `batch` in one transaction, appended after the committed ones.
// Caffe's pattern (data-pipeline.md §2.1): on MDB_MAP_FULL, abort, double the map, redo the batch.
void ShardWriter::commit(std::vector<std::string>& batch, size_t begin, size_t end) {
  Open& open = *open_;
  for (;;) {
    int rc = MDB_SUCCESS;
    {
      Txn txn(open.env.get(), 0, open.path);
      for (size_t i = begin; i < end && rc == MDB_SUCCESS; ++i) {
        std::string key = shard_key(open.count + static_cast<int64_t>(i - begin));
        MDB_val k{key.size(), key.data()};
        MDB_val v{batch[i].size(), batch[i].data()};
        rc = mdb_put(txn.get(), open.dbi, &k, &v, MDB_APPEND);  // keys ascend: no page splits
      }
      if (rc == MDB_SUCCESS) rc = txn.commit_rc();
    }  // an unfinished txn is aborted here
    if (rc == MDB_SUCCESS) break;
    if (rc == MDB_MAP_FULL) {
      // No transaction is active now, as mdb_env_set_mapsize requires.
      open.map_bytes *= 2;
      BVLLM_MDB_CHECK(mdb_env_set_mapsize(open.env.get(), open.map_bytes), open.path);
      continue;
    }
    if (rc == MDB_TXN_FULL && end - begin > 1) {  // too many dirty pages for one txn: halve it
      const size_t middle = begin + (end - begin) / 2;
      commit(batch, begin, middle);
      commit(batch, middle, end);
      return;
    }
    lmdb_fail(rc, "mdb_put/mdb_txn_commit", open.path, __FILE__, __LINE__);
  }
  open.count += static_cast<int64_t>(end - begin);
  for (size_t i = begin; i < end; ++i) open.bytes += record_file_bytes(batch[i].size(), open.page_bytes);
}

void ShardWriter::finish() {
  if (open_ == nullptr) return;
  flush();
  const std::string file = open_->file, path = open_->path;
  const int64_t count = open_->count;
  open_.reset();  // mdb_env_close
  if (count == 0) {
    fs::remove(path);
    return;
  }
  const ShardInfo info{file, count, static_cast<int64_t>(fs::file_size(path))};
  update_index(dir_, {info});
  written_.push_back(info);
}

// --- reader ---------------------------------------------------------------------------------------

struct ShardReader::Env {
  std::string path;
  EnvPtr env;
  MDB_dbi dbi = 0;
};

// MDB_NOTLS: read transactions belong to their object, not the thread, so any thread may read.
constexpr unsigned kReaderFlags = MDB_RDONLY | MDB_NOLOCK | MDB_NOTLS;

ShardReader::ShardReader(const std::string& dir) : dir_(dir), index_(read_index(dir)) {
  ensure_open_files(index_.shards.size());
  int64_t start = 0;
  for (const ShardInfo& info : index_.shards) {
    auto env = std::make_unique<Env>();
    env->path = (fs::path(dir_) / info.file).string();
    BVLLM_REQUIRE(fs::exists(env->path), env->path, ": listed in ", index_path(dir_), " but missing");
    env->env = open_env(env->path, kReaderFlags, 0);
    env->dbi = open_dbi(env->env.get(), MDB_RDONLY, env->path);
    const int64_t count = entries(env->env.get(), env->dbi, MDB_RDONLY, env->path);
    BVLLM_REQUIRE(count == info.samples, env->path, ": holds ", count, " records but ", index_path(dir_), " says ",
                  info.samples);
    envs_.push_back(std::move(env));
    starts_.push_back(start);
    start += info.samples;
  }
}

ShardReader::~ShardReader() = default;
ShardReader::ShardReader(ShardReader&&) noexcept = default;
ShardReader& ShardReader::operator=(ShardReader&&) noexcept = default;

int64_t ShardReader::size() const { return index_.samples(); }

Sample ShardReader::get(int64_t global_index) const {
  BVLLM_REQUIRE(global_index >= 0 && global_index < size(), dir_, ": sample ", global_index,
                " is out of range (the shards hold ", size(), ")");
  const size_t s =
      static_cast<size_t>(std::upper_bound(starts_.begin(), starts_.end(), global_index) - starts_.begin()) - 1;
  const Env& env = *envs_[s];
  std::string key = shard_key(global_index - starts_[s]);
  MDB_val k{key.size(), key.data()};
  MDB_val v;
  Txn txn(env.env.get(), MDB_RDONLY, env.path);
  const int rc = mdb_get(txn.get(), env.dbi, &k, &v);
  BVLLM_REQUIRE(rc != MDB_NOTFOUND, env.path, ": no record with key ", key);
  BVLLM_MDB_CHECK(rc, env.path);
  Sample sample;
  BVLLM_REQUIRE(sample.ParseFromArray(v.mv_data, static_cast<int>(v.mv_size)), env.path, ": record ", key,
                " is not a valid Sample");
  return sample;
}

std::vector<std::string> ShardReader::ids() const {
  std::vector<std::string> ids;
  ids.reserve(static_cast<size_t>(size()));
  for (const auto& env : envs_) {
    Txn txn(env->env.get(), MDB_RDONLY, env->path);
    Cursor cursor(txn, env->dbi, env->path);
    MDB_val k, v;
    for (int rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_FIRST); rc != MDB_NOTFOUND;
         rc = mdb_cursor_get(cursor.get(), &k, &v, MDB_NEXT)) {
      BVLLM_MDB_CHECK(rc, env->path);
      // Sample.id is field 1, which protobuf serializes first: read it without touching the
      // frames (one page per record instead of the whole value).
      google::protobuf::io::CodedInputStream in(static_cast<const uint8_t*>(v.mv_data), static_cast<int>(v.mv_size));
      std::string id;
      uint32_t length = 0;
      const bool fast =
          in.ReadTag() == ((1u << 3) | 2u) && in.ReadVarint32(&length) && in.ReadString(&id, static_cast<int>(length));
      if (!fast) {
        Sample sample;
        BVLLM_REQUIRE(sample.ParseFromArray(v.mv_data, static_cast<int>(v.mv_size)), env->path, ": record ",
                      std::string(static_cast<const char*>(k.mv_data), k.mv_size), " is not a valid Sample");
        id = sample.id();
      }
      ids.push_back(std::move(id));
    }
  }
  return ids;
}

}  // namespace bvllm::data
