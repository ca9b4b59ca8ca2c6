#include "runtime/io/safetensors.h"

#include <fcntl.h>     // defines: open, O_* flags
#include <sys/mman.h>  // defines: mmap, munmap
#include <sys/stat.h>  // defines: fstat
#include <unistd.h>    // defines: close, write, fsync

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>  // defines: nlohmann::ordered_json, nlohmann::json
#include <set>
#include <sstream>
#include <unordered_set>

#include "runtime/io/unique_fd.h"

namespace bvllm {

static_assert(std::endian::native == std::endian::little,
              "safetensors stores little-endian bytes; big-endian hosts would need byte swaps");

namespace {

namespace fs = std::filesystem;
using ordered_json = nlohmann::ordered_json;

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // MAX_HEADER_SIZE of the reference reader
constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

// Every dtype string the reference implementation knows, in the order of its Rust `Dtype` enum
// (the writer sorts by that order, descending), with the bits per element.
struct DtypeSpec {
  std::string_view name;
  int bits;
  std::optional<DType> dtype;
};
constexpr std::array<DtypeSpec, 22> kDtypes = {{
    {"BOOL", 8, DType::Bool}, {"F4", 4, {}},           {"F6_E2M3", 6, {}},        {"F6_E3M2", 6, {}},
    {"U8", 8, DType::U8},     {"I8", 8, {}},           {"F8_E5M2", 8, {}},        {"F8_E4M3", 8, {}},
    {"F8_E8M0", 8, {}},       {"F8_E4M3FNUZ", 8, {}},  {"F8_E5M2FNUZ", 8, {}},    {"I16", 16, {}},
    {"U16", 16, {}},          {"F16", 16, DType::F16}, {"BF16", 16, DType::BF16}, {"I32", 32, DType::I32},
    {"U32", 32, {}},          {"F32", 32, DType::F32}, {"C64", 64, {}},           {"F64", 64, DType::F64},
    {"I64", 64, DType::I64},  {"U64", 64, {}},
}};

const DtypeSpec* find_dtype(std::string_view name) {
  for (const DtypeSpec& spec : kDtypes) {
    if (spec.name == name) return &spec;
  }
  return nullptr;
}

// Position of `dtype` in the reference enum order; the writer puts higher positions first.
size_t dtype_rank(DType dtype) {
  for (size_t i = 0; i < kDtypes.size(); ++i) {
    if (kDtypes[i].dtype == dtype) return i;
  }
  return 0;
}

template <typename... Args>
[[noreturn]] void fail(const std::string& path, const Args&... args) {
  throw Error(str_cat(path, ": ", args...));
}

std::string errno_text() { return std::strerror(errno); }

// A JSON value for an error message, cut short so a hostile header cannot make a huge message.
template <typename Json>
std::string brief(const Json& v) {
  std::string text = v.dump();
  return text.size() <= 80 ? text : text.substr(0, 77) + "...";
}

// Index of the first byte that breaks UTF-8 (the rules of Rust's str::from_utf8: no overlong
// forms, no surrogates, nothing above U+10FFFF), or npos when `s` is valid.
size_t invalid_utf8_at(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size(), i = 0;
  auto cont = [&](size_t k) { return k < n && (p[k] & 0xC0) == 0x80; };
  while (i < n) {
    unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
    } else if (c >= 0xC2 && c <= 0xDF) {
      if (!cont(i + 1)) return i;
      i += 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      if (i + 1 >= n) return i;
      unsigned char c1 = p[i + 1];
      bool ok = (c == 0xE0)   ? (c1 >= 0xA0 && c1 <= 0xBF)
                : (c == 0xED) ? (c1 >= 0x80 && c1 <= 0x9F)
                              : (c1 & 0xC0) == 0x80;
      if (!ok || !cont(i + 2)) return i;
      i += 3;
    } else if (c >= 0xF0 && c <= 0xF4) {
      if (i + 1 >= n) return i;
      unsigned char c1 = p[i + 1];
      bool ok = (c == 0xF0)   ? (c1 >= 0x90 && c1 <= 0xBF)
                : (c == 0xF4) ? (c1 >= 0x80 && c1 <= 0x8F)
                              : (c1 & 0xC0) == 0x80;
      if (!ok || !cont(i + 2) || !cont(i + 3)) return i;
      i += 4;
    } else {
      return i;
    }
  }
  return std::string::npos;
}

// --- header parsing --------------------------------------------------------------------------

// JSON parse that records the first key repeated within one object (nlohmann keeps the last
// value silently; the format forbids duplicates).
ordered_json parse_header(const std::string& path, std::string_view text) {
  std::vector<std::unordered_set<std::string>> open_objects;
  std::optional<std::string> duplicate;
  auto callback = [&](int /*depth*/, nlohmann::json::parse_event_t event, ordered_json& parsed) {
    using Event = nlohmann::json::parse_event_t;
    if (event == Event::object_start) {
      open_objects.emplace_back();
    } else if (event == Event::object_end) {
      if (!open_objects.empty()) open_objects.pop_back();
    } else if (event == Event::key && !open_objects.empty() && parsed.is_string()) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!open_objects.back().insert(key).second && !duplicate) duplicate = key;
    }
    return true;
  };
  ordered_json header;
  try {
    header = ordered_json::parse(text.begin(), text.end(), callback);
  } catch (const nlohmann::json::exception& e) {
    fail(path, "header is not valid JSON: ", e.what());
  }
  if (duplicate) fail(path, "header has the duplicate key '", *duplicate, "'");
  return header;
}

uint64_t json_u64(const std::string& path, const std::string& where, const ordered_json& v) {
  if (!v.is_number_unsigned())
    fail(path, where, " must be a non-negative integer, got ", brief(v), " (", v.type_name(), ")");
  return v.get<uint64_t>();
}

// Parses one header entry {"dtype": .., "shape": [..], "data_offsets": [b, e]}; other fields are
// ignored, as the reference reader ignores them.
SafetensorsInfo parse_entry(const std::string& path, const std::string& name, const ordered_json& entry) {
  const std::string where = str_cat("tensor '", name, "'");
  if (!entry.is_object())
    fail(path, where, ": expected an object with dtype, shape and data_offsets, got ", entry.type_name());
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(field)) fail(path, where, ": missing field '", field, "'");
  }
  SafetensorsInfo info;
  const ordered_json& dtype = entry["dtype"];
  if (!dtype.is_string()) fail(path, where, ": field 'dtype' must be a string, got ", brief(dtype));
  info.dtype_name = dtype.get<std::string>();
  const DtypeSpec* spec = find_dtype(info.dtype_name);
  if (!spec) fail(path, where, ": unknown dtype '", info.dtype_name, "'");
  info.dtype = spec->dtype;

  const ordered_json& shape = entry["shape"];
  if (!shape.is_array()) fail(path, where, ": field 'shape' must be an array, got ", brief(shape));
  // numel and bits with overflow checks (the reference's checked_mul); dims must also fit int64.
  uint64_t numel = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    uint64_t d = json_u64(path, str_cat(where, ": shape[", i, "]"), shape[i]);
    if (d > static_cast<uint64_t>(INT64_MAX) || __builtin_mul_overflow(numel, d, &numel) ||
        numel > static_cast<uint64_t>(INT64_MAX))
      fail(path, where, ": shape ", brief(shape), " has more elements than fit in 64 bits");
    info.shape.push_back(static_cast<int64_t>(d));
  }

  const ordered_json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2)
    fail(path, where, ": field 'data_offsets' must be [begin, end], got ", brief(offsets));
  info.begin = json_u64(path, where + ": data_offsets[0]", offsets[0]);
  info.end = json_u64(path, where + ": data_offsets[1]", offsets[1]);
  return info;
}

}  // namespace

// --- dtype names -----------------------------------------------------------------------------

std::string_view safetensors_dtype_name(DType dtype) {
  for (const DtypeSpec& spec : kDtypes) {
    if (spec.dtype == dtype) return spec.name;
  }
  return "?";
}

std::optional<DType> dtype_from_safetensors(std::string_view name) {
  const DtypeSpec* spec = find_dtype(name);
  return spec ? spec->dtype : std::nullopt;
}

// --- reader ----------------------------------------------------------------------------------

struct SafetensorsFile::Mapping {
  void* base = nullptr;
  size_t size = 0;
  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (base) ::munmap(base, size);
  }
  const char* bytes() const { return static_cast<const char*>(base); }
};

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile file;
  file.path_ = path;

  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) fail(path, "cannot open: ", errno_text());
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) fail(path, "cannot stat: ", errno_text());
  if (!S_ISREG(st.st_mode)) fail(path, "not a regular file");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8)
    fail(path, "file is ", file_size, " bytes, too short to hold the 8-byte header length (truncated?)");

  // Private and writable: in-place updates of loaded tensors stay in this process (copy on write)
  // instead of faulting on a read-only page.
  auto mapping = std::make_shared<Mapping>();
  void* base = ::mmap(nullptr, file_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd.get(), 0);
  if (base == MAP_FAILED) fail(path, "cannot mmap ", file_size, " bytes: ", errno_text());
  mapping->base = base;
  mapping->size = file_size;
  const char* bytes = mapping->bytes();

  uint64_t n = 0;
  std::memcpy(&n, bytes, 8);
  if (n > kMaxHeaderBytes)
    fail(path, "header length ", n, " exceeds the limit of ", kMaxHeaderBytes, " bytes (not a safetensors file?)");
  if (8 + n > file_size)
    fail(path, "header length ", n, " runs past the end of the file (", file_size,
         " bytes): file is truncated or not a safetensors file");
  std::string_view text(bytes + 8, n);
  if (size_t bad = invalid_utf8_at(text); bad != std::string::npos)
    fail(path, "header is not valid UTF-8 (bad byte at header offset ", bad, ")");
  if (text.starts_with("\xEF\xBB\xBF")) fail(path, "header starts with a byte order mark, which JSON forbids");
  ordered_json header = parse_header(path, text);
  if (!header.is_object()) fail(path, "header is not a JSON object (got ", header.type_name(), ")");

  struct Entry {
    std::string name;
    SafetensorsInfo info;
  };
  std::vector<Entry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      const ordered_json& meta = it.value();
      if (!meta.is_object()) fail(path, "__metadata__ must be an object of strings, got ", meta.type_name());
      for (auto m = meta.begin(); m != meta.end(); ++m) {
        if (!m.value().is_string())
          fail(path, "__metadata__ '", m.key(), "': value must be a string, got ", brief(m.value()), " (",
               m.value().type_name(), ")");
        file.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    entries.push_back({it.key(), parse_entry(path, it.key(), it.value())});
  }

  // As the reference reader: order by data_offsets, then require the tensors to tile the data
  // section exactly, from 0, with no gap or overlap, each holding numel * element size bytes.
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return std::pair(a.info.begin, a.info.end) < std::pair(b.info.begin, b.info.end);
  });
  uint64_t covered = 0;
  const std::string* previous = nullptr;
  for (const Entry& e : entries) {
    const SafetensorsInfo& info = e.info;
    std::string where = str_cat("tensor '", e.name, "': data_offsets [", info.begin, ", ", info.end, "]");
    if (info.end < info.begin) fail(path, where, " end before they begin");
    if (info.begin < covered) fail(path, where, " overlap tensor '", *previous, "', which ends at ", covered);
    if (info.begin > covered)
      fail(path, where, " leave a gap: data bytes [", covered, ", ", info.begin, ") belong to no tensor");
    const DtypeSpec* spec = find_dtype(info.dtype_name);
    uint64_t bits = 0;
    if (__builtin_mul_overflow(static_cast<uint64_t>(numel(info.shape)), static_cast<uint64_t>(spec->bits), &bits))
      fail(path, "tensor '", e.name, "': ", info.dtype_name, " ", shape_str(info.shape),
           " has more bytes than fit in 64 bits");
    if (bits % 8 != 0)
      fail(path, "tensor '", e.name, "': ", info.dtype_name, " ", shape_str(info.shape),
           " does not fill a whole number of bytes");
    if (info.end - info.begin != bits / 8)
      fail(path, where, " hold ", info.end - info.begin, " bytes, but ", info.dtype_name, " ", shape_str(info.shape),
           " needs ", bits / 8);
    covered = info.end;
    previous = &e.name;
  }
  const uint64_t data_bytes = file_size - 8 - n;
  if (covered > data_bytes)
    fail(path, "file is truncated: the tensors need ", covered, " bytes of data after the header, but the file has ",
         data_bytes);
  if (covered < data_bytes)
    fail(path, "file not fully covered: ", data_bytes - covered,
         " bytes after the last tensor's data belong to no tensor");

  for (Entry& e : entries) {
    file.names_.push_back(e.name);
    file.index_.emplace(std::move(e.name), std::move(e.info));
  }
  file.data_start_ = 8 + n;
  file.mapping_ = std::move(mapping);
  return file;
}

const SafetensorsInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail(path_, "no tensor named '", name, "'");
  return it->second;
}

Tensor SafetensorsFile::tensor(const std::string& name) const {
  const SafetensorsInfo& meta = info(name);
  if (!meta.dtype)
    fail(path_, "tensor '", name, "': unsupported dtype ", meta.dtype_name,
         " (bvllm reads F32, F64, BF16, F16, I32, I64, U8, BOOL)");
  const DType dtype = *meta.dtype;
  const size_t nbytes = meta.end - meta.begin;
  if (nbytes == 0) return Tensor::empty(meta.shape, dtype);

  char* src = static_cast<char*>(mapping_->base) + data_start_ + meta.begin;
  bool aligned = reinterpret_cast<uintptr_t>(src) % dtype_size(dtype) == 0;
  // A C++ bool must hold 0 or 1; other bytes are read as true, in a copy.
  bool clean_bools = true;
  if (dtype == DType::Bool) {
    clean_bools = std::all_of(src, src + nbytes, [](char c) { return static_cast<unsigned char>(c) <= 1; });
  }
  if (aligned && clean_bools) {
    // The deleter only drops its reference; the last tensor (or this file) unmaps.
    auto storage =
        std::make_shared<Storage>(src, nbytes, Device::cpu(), [keep = mapping_](void*) { static_cast<void>(keep); });
    return Tensor::from_storage(std::move(storage), dtype, meta.shape, contiguous_strides(meta.shape), 0);
  }
  Tensor out = Tensor::empty(meta.shape, dtype);
  std::memcpy(out.raw_data(), src, nbytes);
  if (!clean_bools) {
    auto* b = static_cast<unsigned char*>(out.raw_data());
    for (size_t i = 0; i < nbytes; ++i) b[i] = b[i] != 0;
  }
  return out;
}

std::map<std::string, Tensor> load_safetensors(const std::string& path) {
  SafetensorsFile file = SafetensorsFile::open(path);
  std::map<std::string, Tensor> out;
  for (const std::string& name : file.names()) out.emplace(name, file.tensor(name));
  return out;
}

// --- writer ----------------------------------------------------------------------------------

namespace {

void write_all(const std::string& path, int fd, const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t w = ::write(fd, p, std::min<size_t>(size, size_t{1} << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      fail(path, "write failed: ", errno_text());
    }
    p += w;
    size -= static_cast<size_t>(w);
  }
}

// A file written under a temporary name and renamed into place by commit(); dropped (unlinked)
// when the scope ends without a commit, so a failed save leaves neither half a file nor a .tmp.
class PendingFile {
 public:
  explicit PendingFile(std::string path) : path_(std::move(path)), tmp_(path_ + ".tmp") {}
  ~PendingFile() {
    if (!committed_) ::unlink(tmp_.c_str());
  }
  PendingFile(const PendingFile&) = delete;
  PendingFile& operator=(const PendingFile&) = delete;
  PendingFile(PendingFile&& other) noexcept
      : path_(std::move(other.path_)), tmp_(std::move(other.tmp_)), committed_(other.committed_) {
    other.committed_ = true;
  }

  const std::string& path() const { return path_; }
  const std::string& tmp() const { return tmp_; }
  void commit() {
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) fail(path_, "cannot rename ", tmp_, " into place: ", errno_text());
    committed_ = true;
  }

 private:
  std::string path_;
  std::string tmp_;
  bool committed_ = false;
};

// Writes `pieces` to pending.tmp() and flushes them to disk (the rename is commit()).
void write_bytes(const PendingFile& pending, const std::vector<std::pair<const void*, size_t>>& pieces) {
  UniqueFd fd(::open(pending.tmp().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) fail(pending.tmp(), "cannot create: ", errno_text());
  for (const auto& [data, size] : pieces) write_all(pending.tmp(), fd.get(), data, size);
  if (::fsync(fd.get()) != 0) fail(pending.tmp(), "fsync failed: ", errno_text());
  if (fd.close() != 0) fail(pending.tmp(), "close failed: ", errno_text());
}

void check_names(const std::string& path, const NamedTensors& tensors) {
  std::unordered_set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    if (!t.defined()) fail(path, "tensor '", name, "' is undefined");
    if (name == "__metadata__") fail(path, "a tensor may not be named __metadata__");
    if (invalid_utf8_at(name) != std::string::npos) fail(path, "tensor name '", name, "' is not valid UTF-8");
    if (!seen.insert(name).second) fail(path, "tensor name '", name, "' appears twice");
  }
}

// Writes one safetensors file to pending.tmp() in the reference writer's layout.
void write_safetensors_tmp(const PendingFile& pending, const NamedTensors& tensors,
                           const std::map<std::string, std::string>& metadata) {
  const std::string& path = pending.path();
  check_names(path, tensors);
  std::vector<const std::pair<std::string, Tensor>*> order;
  for (const auto& item : tensors) order.push_back(&item);
  // Descending dtype alignment (the reference enum order), then name: every tensor then starts
  // at a multiple of its element size, since the data section starts 8-byte aligned.
  std::sort(order.begin(), order.end(), [](const auto* a, const auto* b) {
    size_t ra = dtype_rank(a->second.dtype()), rb = dtype_rank(b->second.dtype());
    if (ra != rb) return ra > rb;
    return a->first < b->first;
  });

  ordered_json header = ordered_json::object();
  ordered_json meta = ordered_json::object();
  for (const auto& [k, v] : metadata) {
    if (invalid_utf8_at(k) != std::string::npos || invalid_utf8_at(v) != std::string::npos)
      fail(path, "metadata '", k, "' is not valid UTF-8");
    meta[k] = v;
  }
  if (!metadata.count("format")) meta["format"] = "pt";
  header["__metadata__"] = std::move(meta);
  uint64_t offset = 0;
  for (const auto* item : order) {
    const Tensor& t = item->second;
    std::vector<uint64_t> shape(t.shape().begin(), t.shape().end());
    uint64_t nbytes = t.nbytes();
    ordered_json entry = ordered_json::object();
    entry["dtype"] = safetensors_dtype_name(t.dtype());
    entry["shape"] = shape;
    entry["data_offsets"] = {offset, offset + nbytes};
    header[item->first] = std::move(entry);
    offset += nbytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  uint64_t n = text.size();

  UniqueFd fd(::open(pending.tmp().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) fail(pending.tmp(), "cannot create: ", errno_text());
  write_all(pending.tmp(), fd.get(), &n, 8);
  write_all(pending.tmp(), fd.get(), text.data(), text.size());
  for (const auto* item : order) {
    // One tensor at a time: a contiguous CPU copy only where the tensor is not one already.
    Tensor t = item->second.detach();
    if (!t.device().is_cpu()) t = t.to(Device::cpu());
    t = t.contiguous();
    if (t.nbytes() > 0) write_all(pending.tmp(), fd.get(), t.raw_data(), t.nbytes());
  }
  if (::fsync(fd.get()) != 0) fail(pending.tmp(), "fsync failed: ", errno_text());
  if (fd.close() != 0) fail(pending.tmp(), "close failed: ", errno_text());
}

// Makes the renames in `dir` durable.
void sync_dir(const std::string& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() >= 0) ::fsync(fd.get());
}

std::string parent_dir(const std::string& path) {
  fs::path parent = fs::path(path).parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

// model-00001-of-00004.safetensors
std::string shard_name(size_t index, size_t count) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "model-%05zu-of-%05zu.safetensors", index, count);
  return buf;
}

bool is_shard_name(const std::string& name) {
  if (name.size() != 32 || !name.starts_with("model-") || name.substr(11, 4) != "-of-" ||
      !name.ends_with(".safetensors"))
    return false;
  auto digits = [&](size_t at) {
    return std::all_of(name.begin() + at, name.begin() + at + 5, [](char c) { return c >= '0' && c <= '9'; });
  };
  return digits(6) && digits(15);
}

}  // namespace

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  PendingFile pending(path);
  write_safetensors_tmp(pending, tensors, metadata);
  pending.commit();
  sync_dir(parent_dir(path));
}

// --- sharded checkpoints ---------------------------------------------------------------------

void save_sharded_safetensors(const std::string& dir, const NamedTensors& tensors, uint64_t max_shard_bytes,
                              const std::map<std::string, std::string>& metadata) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail(dir, "cannot create directory: ", ec.message());
  check_names(dir, tensors);

  // huggingface_hub split_state_dict_into_shards_factory, step for step.
  std::vector<NamedTensors> shards;
  NamedTensors current;
  uint64_t current_bytes = 0, total_bytes = 0;
  for (const auto& item : tensors) {
    uint64_t size = item.second.nbytes();
    total_bytes += size;
    if (size > max_shard_bytes) {  // its own shard, placed before the one being filled
      shards.push_back({item});
      continue;
    }
    if (current_bytes + size > max_shard_bytes) {
      shards.push_back(std::move(current));
      current.clear();
      current_bytes = 0;
    }
    current.push_back(item);
    current_bytes += size;
  }
  if (!current.empty() || shards.empty()) shards.push_back(std::move(current));

  // Write every file under its .tmp name first, then rename them all: an error leaves the
  // directory as it was.
  std::vector<PendingFile> pending;
  std::set<std::string> written;
  nlohmann::json weight_map = nlohmann::json::object();  // sorted keys, as transformers writes
  for (size_t i = 0; i < shards.size(); ++i) {
    std::string name = shards.size() == 1 ? kSingleFile : shard_name(i + 1, shards.size());
    pending.emplace_back((fs::path(dir) / name).string());
    write_safetensors_tmp(pending.back(), shards[i], metadata);
    written.insert(name);
    for (const auto& item : shards[i]) weight_map[item.first] = name;
  }
  if (shards.size() > 1) {
    // transformers writes json.dumps(index, indent=2, sort_keys=True) + "\n".
    nlohmann::json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
    std::string text = index.dump(2, ' ', /*ensure_ascii=*/true) + "\n";
    pending.emplace_back((fs::path(dir) / kIndexFile).string());
    write_bytes(pending.back(), {{text.data(), text.size()}});
    written.insert(kIndexFile);
  }
  for (PendingFile& p : pending) p.commit();

  // Remove what an earlier save left that this layout does not use, so that a reader (which
  // prefers model.safetensors over the index) sees only this checkpoint.
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::string name = entry.path().filename().string();
    bool ours = is_shard_name(name) || name == kSingleFile || name == kIndexFile;
    if (ours && !written.count(name)) fs::remove(entry.path(), ec);
  }
  sync_dir(dir);
}

std::map<std::string, Tensor> load_safetensors_dir(const std::string& dir) {
  const fs::path single = fs::path(dir) / kSingleFile;
  const fs::path index_path = fs::path(dir) / kIndexFile;
  std::error_code ec;
  if (fs::exists(single, ec)) return load_safetensors(single.string());
  if (!fs::exists(index_path, ec)) fail(dir, "neither ", kSingleFile, " nor ", kIndexFile, " exists");

  const std::string ipath = index_path.string();
  std::ifstream in(index_path, std::ios::binary);
  if (!in) fail(ipath, "cannot open: ", errno_text());
  std::stringstream buffer;
  buffer << in.rdbuf();
  nlohmann::json index;
  try {
    index = nlohmann::json::parse(buffer.str());
  } catch (const nlohmann::json::exception& e) {
    fail(ipath, "not valid JSON: ", e.what());
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    fail(ipath, "expected an object with a \"weight_map\" object");

  // Shards in sorted order (transformers: sorted(set(weight_map.values()))).
  std::map<std::string, std::vector<std::string>> by_shard;
  for (const auto& [name, shard] : index["weight_map"].items()) {
    if (!shard.is_string()) fail(ipath, "weight_map '", name, "': expected a shard file name, got ", brief(shard));
    const std::string& file = shard.get_ref<const std::string&>();
    if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..")
      fail(ipath, "weight_map '", name, "': shard '", file, "' is not a file name in ", dir);
    by_shard[file].push_back(name);
  }
  std::map<std::string, Tensor> out;
  for (const auto& [shard, names] : by_shard) {
    const fs::path shard_path = fs::path(dir) / shard;
    if (!fs::exists(shard_path, ec))
      fail(ipath, "shard '", shard, "' (holding '", names.front(), "' and ", names.size() - 1,
           " other tensors) is missing");
    SafetensorsFile file = SafetensorsFile::open(shard_path.string());
    for (const std::string& name : names) {
      if (!file.has(name)) fail(ipath, "weight_map puts '", name, "' in '", shard, "', which has no such tensor");
      out.emplace(name, file.tensor(name));
    }
  }
  return out;
}

}  // namespace bvllm
