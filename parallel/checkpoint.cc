#include "parallel/checkpoint.h"

#include <fcntl.h>  // defines: open, O_* flags
#include <glog/logging.h>
#include <google/protobuf/io/tokenizer.h>  // defines: io::ErrorCollector
#include <google/protobuf/text_format.h>
#include <unistd.h>  // defines: close, write, fsync, getpid

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdio>  // defines: rename, renameat2, RENAME_EXCHANGE
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>

#include "runtime/error.h"
#include "runtime/io/unique_fd.h"

namespace bvllm::parallel {
namespace {

namespace fs = std::filesystem;
namespace pb = google::protobuf;

constexpr const char* kManifest = "manifest.pb";
constexpr const char* kLatest = "latest";
constexpr const char* kTensorsSuffix = ".safetensors";
// Every name a save creates in DIR besides step-X and latest starts with this, so the next save
// can remove what an interrupted one left and readers can ignore it.
constexpr const char* kTmpPrefix = ".tmp-";

template <typename... Args>
[[noreturn]] void fail(const std::string& path, const Args&... args) {
  throw Error(str_cat(path, ": ", args...));
}

std::string errno_text() { return std::strerror(errno); }

std::string join(const fs::path& dir, const std::string& name) { return (dir / name).string(); }

// Writes `bytes` to a new file at `path` and flushes it to disk.
void write_file_synced(const std::string& path, const std::string& bytes) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) fail(path, "cannot create: ", errno_text());
  const char* p = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    ssize_t w = ::write(fd.get(), p, left);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) fail(path, "write failed: ", errno_text());
    p += w;
    left -= static_cast<size_t>(w);
  }
  if (::fsync(fd.get()) != 0) fail(path, "fsync failed: ", errno_text());
  if (fd.close() != 0) fail(path, "close failed: ", errno_text());
}

// Makes the creations and renames inside `dir` durable.
void sync_dir(const std::string& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) fail(dir, "cannot open directory to fsync it: ", errno_text());
  // Some file systems cannot fsync a directory (EINVAL); their renames are as durable as they get.
  if (::fsync(fd.get()) != 0 && errno != EINVAL) fail(dir, "fsync of the directory failed: ", errno_text());
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot open: ", errno_text());
  std::ostringstream out;
  out << in.rdbuf();
  if (in.bad()) fail(path, "read failed: ", errno_text());
  return out.str();
}

// A name that stays inside the step directory.
bool is_plain_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

// The step of a "step-<digits>" name.
std::optional<int64_t> parse_step_name(const std::string& name) {
  constexpr std::string_view prefix = "step-";
  if (!name.starts_with(prefix) || name.size() == prefix.size() || name.size() > prefix.size() + 18) return {};
  int64_t step = 0;
  const char* begin = name.data() + prefix.size();
  const char* end = name.data() + name.size();
  auto [at, ec] = std::from_chars(begin, end, step);
  if (ec != std::errc() || at != end || *begin == '-' || *begin == '+') return {};
  return step;
}

// The step directories of `dir` (complete or not), by increasing step.
std::vector<std::pair<int64_t, fs::path>> step_dirs(const std::string& dir) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::optional<int64_t> step = parse_step_name(entry.path().filename().string());
    if (step && entry.is_directory(ec)) out.emplace_back(*step, entry.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Keeps the first error of a parse, 1-based, as "SOURCE:LINE:COL: message" (as recipes/recipe.cc).
class FirstError : public pb::io::ErrorCollector {
 public:
  explicit FirstError(std::string source) : source_(std::move(source)) {}
  void AddError(int line, pb::io::ColumnNumber column, const std::string& message) override {
    if (message_.empty()) message_ = str_cat(source_, ":", line + 1, ":", column + 1, ": ", message);
  }
  const std::string& message() const { return message_; }

 private:
  std::string source_;
  std::string message_;
};

std::string shape_text(const pb::RepeatedField<int64_t>& dims) { return shape_str(Shape(dims.begin(), dims.end())); }

// The number of elements of a shape read from a file, or nullopt when a dim is negative or the
// product does not fit in int64.
template <typename Dims>
std::optional<int64_t> checked_numel(const Dims& dims) {
  int64_t n = 1;
  for (int64_t d : dims) {
    if (d < 0 || __builtin_mul_overflow(n, d, &n)) return std::nullopt;
  }
  return n;
}

// The directory every writer of `step` writes into: derived from the step alone, so that ranks
// agree on it without talking.
fs::path tmp_step_dir(const std::string& dir, int64_t step) {
  return fs::path(dir) / str_cat(kTmpPrefix, checkpoint_dir_name(step));
}

// Checks a manifest read from (or about to be written to) `path`: the version, file names and
// kinds, and every tensor's file, dtype, shape and slice.
void check_manifest(const std::string& path, const CheckpointManifest& manifest) {
  const int version = manifest.format_version();
  BVLLM_REQUIRE(version >= 1 && version <= kCheckpointFormatVersion, path, ": format_version is ", version,
                ", expected 1 to ", kCheckpointFormatVersion);
  BVLLM_REQUIRE(manifest.step() >= 0, path, ": step ", manifest.step(), " is negative");

  std::map<std::string, CheckpointFile::Kind> kinds;
  for (const CheckpointFile& file : manifest.files()) {
    BVLLM_REQUIRE(is_plain_name(file.name()) && file.name() != kManifest, path, ": files.name '", file.name(),
                  "' is not a plain file name of the step directory");
    BVLLM_REQUIRE(file.kind() == CheckpointFile::TENSORS || file.kind() == CheckpointFile::TEXT, path,
                  ": files.kind of ", file.name(), " is ", CheckpointFile::Kind_Name(file.kind()),
                  ", expected TENSORS or TEXT");
    BVLLM_REQUIRE(file.kind() != CheckpointFile::TENSORS || file.name().ends_with(kTensorsSuffix), path,
                  ": files.name '", file.name(), "' of kind TENSORS does not end with ", kTensorsSuffix);
    BVLLM_REQUIRE(kinds.emplace(file.name(), file.kind()).second, path, ": files.name '", file.name(),
                  "' appears twice");
  }
  std::set<std::pair<std::string, std::string>> seen;
  for (const CheckpointTensor& t : manifest.tensors()) {
    auto kind = kinds.find(t.file());
    BVLLM_REQUIRE(kind != kinds.end() && kind->second == CheckpointFile::TENSORS, path, ": tensors.file '", t.file(),
                  "' of tensor '", t.name(), "' is not a TENSORS entry of files");
    BVLLM_REQUIRE(seen.emplace(t.file(), t.name()).second, path, ": tensor '", t.name(), "' appears twice in ",
                  t.file());
    BVLLM_REQUIRE(dtype_from_safetensors(t.dtype()).has_value(), path, ": tensors.dtype of '", t.name(), "' is '",
                  t.dtype(), "', not a dtype bvllm has");
    const std::optional<int64_t> total = checked_numel(t.shape());
    BVLLM_REQUIRE(total.has_value(), path, ": tensors.shape of '", t.name(), "' is ", shape_text(t.shape()));
    if (t.has_flat()) {
      BVLLM_REQUIRE(version >= 2, path, ": tensor '", t.name(), "' of ", t.file(),
                    " has flat, which format_version 1 does not have");
      BVLLM_REQUIRE(t.slice_start().empty() && t.slice_size().empty(), path, ": tensor '", t.name(), "' of ", t.file(),
                    " has both flat and slice_start/slice_size");
      const int64_t start = t.flat().start();
      const int64_t size = t.flat().size();
      BVLLM_REQUIRE(start >= 0 && size >= 0 && start <= *total && size <= *total - start, path, ": tensor '", t.name(),
                    "' of ", t.file(), " holds flat elements [", start, ", ", start + size, ") but its global shape ",
                    shape_text(t.shape()), " has ", *total);
      continue;
    }
    BVLLM_REQUIRE(t.slice_start_size() == t.shape_size() && t.slice_size_size() == t.shape_size(), path, ": tensor '",
                  t.name(), "' has slice_start ", shape_text(t.slice_start()), " and slice_size ",
                  shape_text(t.slice_size()), " for shape ", shape_text(t.shape()), " (one per dim expected)");
    for (int d = 0; d < t.shape_size(); ++d) {
      // Boxes other than the whole tensor come with tensor-parallel saves.
      BVLLM_REQUIRE(t.slice_start(d) == 0 && t.slice_size(d) == t.shape(d), path, ": tensor '", t.name(),
                    "' is a slice (slice_start ", shape_text(t.slice_start()), ", slice_size ",
                    shape_text(t.slice_size()), " of ", shape_text(t.shape()),
                    "); loading per-dim slices is not supported yet");
    }
  }
}

// Every file the manifest lists exists as a regular file of its recorded size.
void check_file_sizes(const fs::path& step_dir, const CheckpointManifest& manifest) {
  for (const CheckpointFile& file : manifest.files()) {
    const std::string path = join(step_dir, file.name());
    std::error_code ec;
    fs::file_status status = fs::status(path, ec);
    if (!fs::exists(status)) fail(path, "missing (", kManifest, " lists it)");
    if (!fs::is_regular_file(status)) fail(path, "not a regular file");
    uint64_t size = fs::file_size(path, ec);
    if (ec) fail(path, "cannot stat: ", ec.message());
    if (size != file.bytes()) {
      fail(path, "size is ", size, " bytes but ", kManifest, " files.bytes says ", file.bytes(),
           size < file.bytes() ? " (truncated)" : " (overwritten)");
    }
  }
}

// Empty when `step_dir` is complete, else why not.
std::string incomplete_because(const fs::path& step_dir) {
  try {
    check_file_sizes(step_dir, read_checkpoint_manifest(step_dir.string()));
    return "";
  } catch (const Error& e) {
    return e.what();
  }
}

// Removes what an interrupted save left in `dir`.
void remove_leftovers(const std::string& dir) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (!entry.path().filename().string().starts_with(kTmpPrefix)) continue;
    std::error_code rm;
    fs::remove_all(entry.path(), rm);
    if (rm) LOG(WARNING) << entry.path().string() << ": cannot remove a leftover of an earlier save: " << rm.message();
  }
}

// Removes a directory tree when the scope ends, unless released.
class DirGuard {
 public:
  explicit DirGuard(fs::path path) : path_(std::move(path)) {}
  ~DirGuard() {
    if (path_.empty()) return;
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  DirGuard(const DirGuard&) = delete;
  DirGuard& operator=(const DirGuard&) = delete;
  void release() { path_.clear(); }
  void reset() {
    std::error_code ec;
    if (!path_.empty()) fs::remove_all(path_, ec);
    path_.clear();
  }

 private:
  fs::path path_;
};

// The names and slices of `part`, before anything is written.
void check_part(const std::string& dir, const Checkpoint& part) {
  BVLLM_REQUIRE(part.step >= 0, dir, ": checkpoint step ", part.step, " is negative");
  std::set<std::string> files;
  for (const auto& [stem, tensors] : part.tensors) {
    const std::string name = stem + kTensorsSuffix;
    BVLLM_REQUIRE(is_plain_name(stem), dir, ": tensors stem '", stem, "' is not a plain file name");
    BVLLM_REQUIRE(files.insert(name).second, dir, ": two files would be named ", name);
  }
  for (const auto& [name, text] : part.texts) {
    BVLLM_REQUIRE(is_plain_name(name), dir, ": text name '", name, "' is not a plain file name");
    BVLLM_REQUIRE(name != kManifest, dir, ": a text may not be named ", kManifest, " (the checkpoint's own)");
    BVLLM_REQUIRE(!name.ends_with(kTensorsSuffix), dir, ": text name '", name, "' ends with ", kTensorsSuffix,
                  ", which is for tensors");
    BVLLM_REQUIRE(files.insert(name).second, dir, ": two files would be named ", name);
  }
  for (const auto& [stem, slices] : part.slices) {
    auto tensors = part.tensors.find(stem);
    BVLLM_REQUIRE(tensors != part.tensors.end() || slices.empty(), dir, ": slices of stem '", stem,
                  "', which has no tensors");
    for (const auto& [name, slice] : slices) {
      auto t = std::find_if(tensors->second.begin(), tensors->second.end(),
                            [&](const auto& named) { return named.first == name; });
      BVLLM_REQUIRE(t != tensors->second.end(), dir, ": slice '", name, "' of stem '", stem,
                    "' is not one of its tensors");
      BVLLM_REQUIRE(t->second.defined(), dir, ": tensor '", name, "' of stem '", stem, "' is undefined");
      BVLLM_REQUIRE(t->second.dim() == 1, dir, ": slice '", name, "' of stem '", stem,
                    "' must be stored as a 1-D tensor, not ", shape_str(t->second.shape()));
      std::optional<int64_t> total = checked_numel(slice.global_shape);
      BVLLM_REQUIRE(total.has_value(), dir, ": slice '", name, "' of stem '", stem, "' has global shape ",
                    shape_str(slice.global_shape));
      BVLLM_REQUIRE(slice.flat_start >= 0 && slice.flat_start <= *total - t->second.numel(), dir, ": slice '", name,
                    "' of stem '", stem, "' holds flat elements [", slice.flat_start, ", ",
                    slice.flat_start + t->second.numel(), ") but its global shape ", shape_str(slice.global_shape),
                    " has ", *total);
    }
  }
}

// The manifest entries of one tensor: a whole tensor, or a slice of a flattened one.
void add_tensor_entry(CheckpointManifest& manifest, const std::string& file, const std::string& name, const Tensor& t,
                      const TensorSlice* slice) {
  CheckpointTensor* entry = manifest.add_tensors();
  entry->set_name(name);
  entry->set_file(file);
  entry->set_dtype(std::string(safetensors_dtype_name(t.dtype())));
  if (slice != nullptr) {
    for (int64_t d : slice->global_shape) entry->add_shape(d);
    entry->mutable_flat()->set_start(slice->flat_start);
    entry->mutable_flat()->set_size(t.numel());
    return;
  }
  for (int64_t d : t.shape()) {
    entry->add_shape(d);
    entry->add_slice_start(0);
    entry->add_slice_size(d);
  }
}

// The oldest version that can say what `manifest` says (parallel/checkpoint.proto).
int needed_format_version(const CheckpointManifest& manifest) {
  for (const CheckpointTensor& t : manifest.tensors()) {
    if (t.has_flat()) return 2;
  }
  return 1;
}

// Renames the complete directory `tmp` to `final_dir`. When `final_dir` exists, the two are
// swapped in one atomic renameat2(RENAME_EXCHANGE), so a reader sees the old or the new step
// directory and never neither; the old one is then at `tmp` (returned, for the caller to delete
// after `latest` moved). File systems without the exchange get the old one moved aside first.
std::optional<fs::path> install(const fs::path& dir, const fs::path& tmp, const fs::path& final_dir) {
  std::error_code ec;
  if (!fs::exists(final_dir, ec)) {
    if (::rename(tmp.c_str(), final_dir.c_str()) != 0)
      fail(final_dir.string(), "cannot rename ", tmp.string(), " into place: ", errno_text());
    return std::nullopt;
  }
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) == 0) return tmp;
  if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
    fail(final_dir.string(), "cannot swap in ", tmp.string(), ": ", errno_text());
  const fs::path aside = dir / str_cat(kTmpPrefix, "old-", final_dir.filename().string(), "-", ::getpid());
  fs::remove_all(aside, ec);
  if (::rename(final_dir.c_str(), aside.c_str()) != 0)
    fail(final_dir.string(), "cannot move the existing directory aside: ", errno_text());
  if (::rename(tmp.c_str(), final_dir.c_str()) != 0)
    fail(final_dir.string(), "cannot rename ", tmp.string(), " into place: ", errno_text());
  return aside;
}

// Deletes the oldest step directories below `step` so that keep_last remain with it.
void prune(const std::string& dir, int64_t step, int keep_last) {
  std::vector<fs::path> older;
  for (const auto& [s, path] : step_dirs(dir)) {
    if (s < step) older.push_back(path);
  }
  const size_t keep = static_cast<size_t>(keep_last - 1);
  for (size_t i = 0; i + keep < older.size(); ++i) {
    std::error_code ec;
    fs::remove_all(older[i], ec);
    if (ec) LOG(WARNING) << older[i].string() << ": cannot delete (keep_last " << keep_last << "): " << ec.message();
  }
}

}  // namespace

std::string checkpoint_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step-%08lld", static_cast<long long>(step));
  return buf;
}

std::string save_checkpoint(const std::string& dir, const Checkpoint& checkpoint,
                            const CheckpointSaveOptions& options) {
  BVLLM_REQUIRE(options.keep_last >= 0, dir, ": keep_last ", options.keep_last, " is negative");
  check_part(dir, checkpoint);  // before the directory is touched
  prepare_checkpoint_dir(dir, checkpoint.step);
  CheckpointPart part;
  {
    DirGuard tmp_guard(tmp_step_dir(dir, checkpoint.step));  // a failed write leaves nothing behind
    part = write_checkpoint_part(dir, checkpoint, options);
    tmp_guard.release();
  }
  return commit_checkpoint(dir, checkpoint.step, {part}, options);
}

std::string CheckpointPart::serialize() const { return manifest.SerializeAsString(); }

CheckpointPart CheckpointPart::parse(const std::string& bytes, const std::string& source) {
  CheckpointPart part;
  BVLLM_REQUIRE(part.manifest.ParseFromString(bytes), source, ": ", bytes.size(),
                " bytes that are not a serialized CheckpointManifest");
  return part;
}

std::string prepare_checkpoint_dir(const std::string& dir, int64_t step) {
  BVLLM_REQUIRE(step >= 0, dir, ": checkpoint step ", step, " is negative");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail(dir, "cannot create directory: ", ec.message());
  remove_leftovers(dir);
  const fs::path tmp = tmp_step_dir(dir, step);
  // Writers must find it empty: files of a crashed save of the same step would pass for theirs.
  if (fs::exists(tmp, ec)) fail(tmp.string(), "a leftover of an earlier save that cannot be removed");
  if (!fs::create_directory(tmp, ec) || ec) fail(tmp.string(), "cannot create directory: ", ec.message());
  sync_dir(dir);
  return tmp.string();
}

CheckpointPart write_checkpoint_part(const std::string& dir, const Checkpoint& part,
                                     const CheckpointSaveOptions& options) {
  check_part(dir, part);
  const fs::path tmp = tmp_step_dir(dir, part.step);
  std::error_code ec;
  if (!fs::is_directory(tmp, ec)) {
    fail(tmp.string(), "missing: prepare_checkpoint_dir(", dir, ", ", part.step,
         ") must run (on one rank) before any part is written");
  }
  auto stage = [&](const std::string& name) {
    if (options.on_stage) options.on_stage("wrote " + name);
  };
  CheckpointPart out;
  CheckpointManifest& manifest = out.manifest;
  manifest.set_step(part.step);
  auto add_file = [&](const std::string& name, CheckpointFile::Kind kind) {
    const std::string path = join(tmp, name);
    std::error_code size_ec;
    uint64_t size = fs::file_size(path, size_ec);
    if (size_ec) fail(path, "cannot stat what was just written: ", size_ec.message());
    CheckpointFile* file = manifest.add_files();
    file->set_name(name);
    file->set_kind(kind);
    file->set_bytes(size);
  };
  // Another writer with the same file name would overwrite it (or be overwritten): the commit
  // finds every such clash from the parts; this finds the ones already on disk, early.
  auto require_new = [&](const std::string& name) {
    if (fs::exists(tmp / name, ec)) fail(join(tmp, name), "already written by another part of this save");
  };
  const std::map<std::string, TensorSlice> no_slices;
  for (const auto& [stem, tensors] : part.tensors) {
    const std::string name = stem + kTensorsSuffix;
    require_new(name);
    save_safetensors(join(tmp, name), tensors);  // fsyncs the file and renames it into tmp
    add_file(name, CheckpointFile::TENSORS);
    stage(name);
    auto slices = part.slices.find(stem);
    const std::map<std::string, TensorSlice>& stem_slices = slices == part.slices.end() ? no_slices : slices->second;
    for (const auto& [tensor_name, t] : tensors) {
      auto slice = stem_slices.find(tensor_name);
      add_tensor_entry(manifest, name, tensor_name, t, slice == stem_slices.end() ? nullptr : &slice->second);
    }
  }
  for (const auto& [name, text] : part.texts) {
    require_new(name);
    write_file_synced(join(tmp, name), text);
    add_file(name, CheckpointFile::TEXT);
    stage(name);
  }
  sync_dir(tmp.string());
  manifest.set_format_version(needed_format_version(manifest));
  return out;
}

std::string commit_checkpoint(const std::string& dir, int64_t step, const std::vector<CheckpointPart>& parts,
                              const CheckpointSaveOptions& options) {
  BVLLM_REQUIRE(step >= 0, dir, ": checkpoint step ", step, " is negative");
  BVLLM_REQUIRE(options.keep_last >= 0, dir, ": keep_last ", options.keep_last, " is negative");
  const fs::path root(dir);
  const fs::path tmp = tmp_step_dir(dir, step);
  std::error_code ec;
  if (!fs::is_directory(tmp, ec)) {
    fail(tmp.string(), "missing: the parts of step ", step, " were not written (prepare_checkpoint_dir first)");
  }
  DirGuard tmp_guard(tmp);  // a failed commit leaves no half-made directory behind

  // One manifest from every part, each part checked on its own first so that errors say which.
  CheckpointManifest manifest;
  manifest.set_step(step);
  std::map<std::string, size_t> writer;  // file name -> the part that wrote it
  for (size_t i = 0; i < parts.size(); ++i) {
    const CheckpointManifest& part = parts[i].manifest;
    BVLLM_REQUIRE(part.step() == step, tmp.string(), ": part ", i, " is of step ", part.step(), ", expected ", step);
    std::set<std::string> own;
    for (const CheckpointFile& file : part.files()) {
      auto [at, added] = writer.emplace(file.name(), i);
      BVLLM_REQUIRE(added, tmp.string(), ": file ", file.name(), " is written by parts ", at->second, " and ", i,
                    " (file names must differ between writers)");
      own.insert(file.name());
      *manifest.add_files() = file;
    }
    for (const CheckpointTensor& t : part.tensors()) {
      BVLLM_REQUIRE(own.count(t.file()), tmp.string(), ": part ", i, " lists tensor '", t.name(), "' in ", t.file(),
                    ", a file it did not write");
      *manifest.add_tensors() = t;
    }
  }
  manifest.set_format_version(needed_format_version(manifest));
  const std::string manifest_path = join(tmp, kManifest);
  check_manifest(manifest_path, manifest);
  check_file_sizes(tmp, manifest);
  for (const auto& entry : fs::directory_iterator(tmp)) {
    const std::string name = entry.path().filename().string();
    BVLLM_REQUIRE(writer.count(name), entry.path().string(), ": in the directory but in no part (", parts.size(),
                  " parts)");
  }

  std::string text;
  CHECK(pb::TextFormat::PrintToString(manifest, &text));
  write_file_synced(manifest_path,
                    "# bvllm checkpoint manifest: parallel/checkpoint.proto CheckpointManifest\n" + text);
  sync_dir(tmp.string());
  if (options.on_stage) options.on_stage(str_cat("wrote ", kManifest));

  const std::string name = checkpoint_dir_name(step);
  const fs::path final_dir = root / name;
  std::optional<fs::path> replaced = install(root, tmp, final_dir);
  if (!replaced) tmp_guard.release();  // else the guard now deletes the replaced directory
  sync_dir(dir);
  if (options.on_stage) options.on_stage("directory");

  // Only now may `latest` name the new directory: it is complete and durable.
  const std::string latest_tmp = join(root, str_cat(kTmpPrefix, kLatest, "-", ::getpid()));
  write_file_synced(latest_tmp, name + "\n");
  const std::string latest = join(root, kLatest);
  if (::rename(latest_tmp.c_str(), latest.c_str()) != 0)
    fail(latest, "cannot rename ", latest_tmp, " into place: ", errno_text());
  sync_dir(dir);
  if (options.on_stage) options.on_stage("latest");

  if (replaced && *replaced != tmp) fs::remove_all(*replaced, ec);  // moved aside (no exchange)
  if (options.keep_last > 0) prune(dir, step, options.keep_last);
  tmp_guard.reset();  // the directory this save replaced, if any, goes now
  if (options.on_stage) options.on_stage("done");
  return final_dir.string();
}

CheckpointManifest read_checkpoint_manifest(const std::string& step_dir) {
  const std::string path = join(step_dir, kManifest);
  std::error_code ec;
  if (!fs::exists(path, ec)) fail(path, "missing (the save of this step did not complete)");
  CheckpointManifest manifest;
  FirstError errors(path);
  pb::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(read_file(path), &manifest)) {
    throw Error(errors.message().empty() ? str_cat(path, ": not a CheckpointManifest") : errors.message());
  }
  check_manifest(path, manifest);
  return manifest;
}

Checkpoint load_checkpoint(const std::string& path) {
  std::error_code ec;
  if (!fs::is_directory(path, ec)) fail(path, "no such checkpoint directory");
  fs::path step_dir(path);
  if (!fs::exists(step_dir / kManifest, ec) && !parse_step_name(fs::path(path).filename().string())) {
    std::optional<std::string> latest = latest_checkpoint(path);
    if (!latest) {
      auto dirs = step_dirs(path);
      if (dirs.empty()) fail(path, "no checkpoint here (neither ", kManifest, " nor a step-XXXXXXXX directory)");
      fail(path, "no complete checkpoint; the newest is damaged: ", incomplete_because(dirs.back().second));
    }
    step_dir = *latest;
  }

  const CheckpointManifest manifest = read_checkpoint_manifest(step_dir.string());
  const std::string manifest_path = join(step_dir, kManifest);
  if (auto dir_step = parse_step_name(step_dir.filename().string())) {
    BVLLM_REQUIRE(*dir_step == manifest.step(), manifest_path, ": step is ", manifest.step(), " but the directory is ",
                  step_dir.filename().string());
  }
  check_file_sizes(step_dir, manifest);

  Checkpoint checkpoint;
  checkpoint.step = manifest.step();
  std::map<std::string, std::vector<const CheckpointTensor*>> by_file;
  for (const CheckpointTensor& t : manifest.tensors()) by_file[t.file()].push_back(&t);
  for (const CheckpointFile& file : manifest.files()) {
    const std::string file_path = join(step_dir, file.name());
    if (file.kind() == CheckpointFile::TEXT) {
      checkpoint.texts[file.name()] = read_file(file_path);
      continue;
    }
    SafetensorsFile st = SafetensorsFile::open(file_path);
    const std::vector<const CheckpointTensor*>& expected = by_file[file.name()];
    std::set<std::string> listed;
    NamedTensors tensors;
    std::map<std::string, TensorSlice> slices;
    for (const CheckpointTensor* t : expected) {
      listed.insert(t->name());
      BVLLM_REQUIRE(st.has(t->name()), file_path, ": tensor '", t->name(), "' missing (", kManifest, " lists it)");
      const SafetensorsInfo& info = st.info(t->name());
      BVLLM_REQUIRE(info.dtype_name == t->dtype(), file_path, ": tensor '", t->name(), "' has dtype ", info.dtype_name,
                    " but ", kManifest, " says ", t->dtype());
      const Shape global(t->shape().begin(), t->shape().end());
      if (t->has_flat()) {
        BVLLM_REQUIRE(info.shape == Shape{t->flat().size()}, file_path, ": tensor '", t->name(), "' has shape ",
                      shape_str(info.shape), " but ", kManifest, " says it is the flat slice [", t->flat().start(),
                      ", ", t->flat().start() + t->flat().size(), ") of ", shape_str(global), ", stored as [",
                      t->flat().size(), "]");
        slices[t->name()] = TensorSlice{.global_shape = global, .flat_start = t->flat().start()};
      } else {
        BVLLM_REQUIRE(info.shape == global, file_path, ": tensor '", t->name(), "' has shape ", shape_str(info.shape),
                      " but ", kManifest, " says ", shape_str(global));
      }
      tensors.emplace_back(t->name(), st.tensor(t->name()));
    }
    for (const std::string& name : st.names()) {
      BVLLM_REQUIRE(listed.count(name), file_path, ": tensor '", name, "' is not in ", kManifest);
    }
    const std::string stem = file.name().substr(0, file.name().size() - std::strlen(kTensorsSuffix));
    checkpoint.tensors[stem] = std::move(tensors);
    if (!slices.empty()) checkpoint.slices[stem] = std::move(slices);
  }
  return checkpoint;
}

namespace {

// One stem's copy of (part of) a flattened global tensor: elements [begin, end) of it.
struct Holder {
  int64_t begin = 0;
  int64_t end = 0;
  const std::string* stem = nullptr;
  const Tensor* tensor = nullptr;
  Shape global_shape;
};

std::vector<Holder> holders_of(const Checkpoint& checkpoint, const std::string& name) {
  std::vector<Holder> out;
  for (const auto& [stem, tensors] : checkpoint.tensors) {
    auto stem_slices = checkpoint.slices.find(stem);
    for (const auto& [tensor_name, t] : tensors) {
      if (tensor_name != name) continue;
      const TensorSlice* slice = nullptr;
      if (stem_slices != checkpoint.slices.end()) {
        auto it = stem_slices->second.find(name);
        if (it != stem_slices->second.end()) slice = &it->second;
      }
      const int64_t begin = slice != nullptr ? slice->flat_start : 0;
      out.push_back(Holder{.begin = begin,
                           .end = begin + t.numel(),
                           .stem = &stem,
                           .tensor = &t,
                           .global_shape = slice != nullptr ? slice->global_shape : t.shape()});
    }
  }
  return out;
}

std::string holder_text(const Holder& h) {
  return str_cat("[", h.begin, ", ", h.end, ") in ", *h.stem, kTensorsSuffix);
}

}  // namespace

Tensor assemble_flat_range(const Checkpoint& checkpoint, const std::string& name, int64_t start, int64_t length,
                           DType dtype) {
  const std::string what = str_cat("checkpoint step ", checkpoint.step, ": tensor '", name, "'");
  std::vector<Holder> holders = holders_of(checkpoint, name);
  BVLLM_REQUIRE(!holders.empty(), what, " is in no file of the checkpoint");
  const Shape& shape = holders.front().global_shape;
  for (const Holder& h : holders) {
    BVLLM_REQUIRE(h.global_shape == shape, what, " has global shape ", shape_str(shape), " in ", *holders.front().stem,
                  kTensorsSuffix, " but ", shape_str(h.global_shape), " in ", *h.stem, kTensorsSuffix);
  }
  const int64_t total = numel(shape);
  BVLLM_REQUIRE(start >= 0 && length >= 0 && start <= total && length <= total - start, what, ": elements [", start,
                ", ", start + length, ") asked for, but its global shape ", shape_str(shape), " has ", total);
  const int64_t end = start + length;

  // The holders that meet [start, end), by where they begin: no two may overlap in it, and
  // together they must cover it.
  std::erase_if(holders, [&](const Holder& h) { return h.end <= start || h.begin >= end || h.begin == h.end; });
  std::sort(holders.begin(), holders.end(), [](const Holder& a, const Holder& b) { return a.begin < b.begin; });
  std::vector<std::string> missing;
  int64_t at = start;            // everything before it is covered
  const Holder* last = nullptr;  // the holder that reaches furthest so far
  for (const Holder& h : holders) {
    if (last != nullptr && h.begin < last->end) {
      throw Error(str_cat(what, ": elements ", holder_text(*last), " and ", holder_text(h),
                          " overlap (which one to take is ambiguous)"));
    }
    if (h.begin > at) missing.push_back(str_cat("[", at, ", ", h.begin, ")"));
    at = std::max(at, h.end);
    if (last == nullptr || h.end > last->end) last = &h;
  }
  if (at < end) missing.push_back(str_cat("[", at, ", ", end, ")"));
  if (!missing.empty()) {
    std::string held;
    for (const Holder& h : holders_of(checkpoint, name)) held += str_cat(held.empty() ? "" : ", ", holder_text(h));
    std::string gaps;
    for (const std::string& m : missing) gaps += str_cat(gaps.empty() ? "" : ", ", m);
    throw Error(str_cat(what, ": elements ", gaps, " of the asked [", start, ", ", end,
                        ") are in no file of the checkpoint (held: ", held, ")"));
  }

  Tensor out = Tensor::empty({length}, dtype);
  for (const Holder& h : holders) {
    const Tensor flat = h.tensor->reshape({h.tensor->numel()});
    const int64_t lo = std::max(start, h.begin);
    const int64_t hi = std::min(end, h.end);
    out.narrow(0, lo - start, hi - lo).copy_(flat.narrow(0, lo - h.begin, hi - lo));
  }
  return out;
}

std::optional<Shape> find_global_shape(const Checkpoint& checkpoint, const std::string& name) {
  std::vector<Holder> holders = holders_of(checkpoint, name);
  if (holders.empty()) return std::nullopt;
  return holders.front().global_shape;
}

std::optional<std::string> latest_checkpoint(const std::string& dir) {
  const fs::path root(dir);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return std::nullopt;
  const fs::path latest = root / kLatest;
  if (fs::exists(latest, ec)) {
    std::string name;
    try {
      name = read_file(latest.string());
    } catch (const Error& e) {
      LOG(WARNING) << e.what();
    }
    while (!name.empty() && std::isspace(static_cast<unsigned char>(name.back()))) name.pop_back();
    if (parse_step_name(name)) {
      std::string why = incomplete_because(root / name);
      if (why.empty()) return (root / name).string();
      LOG(WARNING) << latest.string() << " names " << name << ", which is damaged (" << why
                   << "); using the newest complete step directory instead";
    } else {
      LOG(WARNING) << latest.string() << ": '" << name << "' is not a step-XXXXXXXX name; ignoring it";
    }
  }
  auto dirs = step_dirs(dir);
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
    if (incomplete_because(it->second).empty()) return it->second.string();
  }
  return std::nullopt;
}

std::vector<std::string> list_checkpoints(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& [step, path] : step_dirs(dir)) {
    if (incomplete_because(path).empty()) out.push_back(path.string());
  }
  return out;
}

}  // namespace bvllm::parallel
