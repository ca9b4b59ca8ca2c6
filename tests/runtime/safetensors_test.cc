// safetensors reader, writer and sharded checkpoints: round trips, the reference writer's layout,
// files from an independent writer, one test per malformed input, and the HF sharded layout.
#include "runtime/io/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>  // defines: getpid

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>  // defines: nlohmann::json (to check the index file)
#include <random>
#include <sstream>

#include "runtime/ops.h"
#include "tests/support/messages.h"

namespace bvllm {
namespace {

namespace fs = std::filesystem;

// --- helpers ---------------------------------------------------------------------------------

class Safetensors : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) /
           str_cat("bvllm_safetensors_", ::getpid(), "_", info->test_suite_name(), "_", info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
};

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  std::memcpy(s.data(), &n, 8);
  return s;
}

template <typename T>
std::string bytes_of(std::initializer_list<T> values) {
  std::string s(values.size() * sizeof(T), '\0');
  if (values.size()) std::memcpy(s.data(), std::data(values), s.size());
  return s;
}

// A file as another writer might produce it: u64 N, the header text as given, the data bytes.
std::string file_bytes(const std::string& header, const std::string& data) {
  return le64(header.size()) + header + data;
}

void write_raw(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string read_raw(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The logical bytes of a tensor (row-major), whatever its strides.
std::string tensor_bytes(const Tensor& t) {
  Tensor c = t.contiguous();
  std::string s(c.nbytes(), '\0');
  if (!s.empty()) std::memcpy(s.data(), c.raw_data(), s.size());
  return s;
}

std::string open_error(const std::string& path) {
  try {
    SafetensorsFile::open(path);
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "opening " << path << " did not fail";
  return "";
}

// --- round trips -----------------------------------------------------------------------------

TEST_F(Safetensors, RoundTripsEveryDtypeWithScalarsEmptyAndStridedTensors) {
  NamedTensors tensors = {
      {"f32", Tensor::from<float>({1.5f, -2.25f, 3.0f, 1e-30f, -0.0f, 7.0f}, {2, 3})},
      {"f64", Tensor::from<double>({1.0 / 3.0, -1e300})},
      {"bf16", Tensor::from<bf16>({bf16{0x3F80}, bf16{0xC0A0}, bf16{0x7FC0}})},
      {"f16", Tensor::from<f16>({f16{0x3C00}, f16{0xFC00}}, {2, 1})},
      {"i32", Tensor::from<int32_t>({-7, 2147483647, 0})},
      {"i64", Tensor::from<int64_t>({int64_t{1} << 40, -3})},
      {"u8", Tensor::from<uint8_t>({0, 255, 17})},
      {"bool", Tensor::from<bool>({true, false, true, true})},
      {"scalar", Tensor::scalar<float>(42.0f)},
      {"empty", Tensor::empty({0, 3}, DType::BF16)},
      {"empty_i64", Tensor::empty({4, 0}, DType::I64)},
      // Non-contiguous inputs: a transpose and a strided slice.
      {"transposed", Tensor::from<float>({0, 1, 2, 3, 4, 5}, {2, 3}).transpose(0, 1)},
      {"sliced", Tensor::from<int64_t>({0, 1, 2, 3, 4, 5, 6, 7}).slice(0, 1, 8, 3)},
  };
  ASSERT_FALSE(tensors[11].second.is_contiguous());
  ASSERT_FALSE(tensors[12].second.is_contiguous());
  save_safetensors(path("all.safetensors"), tensors);

  SafetensorsFile file = SafetensorsFile::open(path("all.safetensors"));
  EXPECT_EQ(file.names().size(), tensors.size());
  EXPECT_EQ(file.metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  for (const auto& [name, original] : tensors) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(file.has(name));
    Tensor t = file.tensor(name);
    EXPECT_EQ(t.dtype(), original.dtype());
    EXPECT_EQ(t.shape(), original.shape());
    EXPECT_EQ(t.strides(), contiguous_strides(t.shape()));
    EXPECT_TRUE(t.device().is_cpu());
    EXPECT_EQ(tensor_bytes(t), tensor_bytes(original));
    EXPECT_EQ(file.info(name).shape, original.shape());
    EXPECT_EQ(file.info(name).dtype, original.dtype());
  }
  EXPECT_EQ(file.tensor("transposed").to_vector<float>(), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  EXPECT_EQ(file.tensor("sliced").to_vector<int64_t>(), (std::vector<int64_t>{1, 4, 7}));
  EXPECT_EQ(file.tensor("scalar").dim(), 0);
  EXPECT_EQ(file.tensor("scalar").item<float>(), 42.0f);
  EXPECT_FALSE(file.has("missing"));

  // load_safetensors gives the same set by name.
  auto all = load_safetensors(path("all.safetensors"));
  EXPECT_EQ(all.size(), tensors.size());
  EXPECT_EQ(tensor_bytes(all.at("i64")), tensor_bytes(tensors[5].second));
}

TEST_F(Safetensors, WriterFollowsTheReferenceLayout) {
  // The reference writer's test vector ("attn.0", F32 [1, 2, 3], 0..5) with the metadata that
  // transformers always writes.
  save_safetensors(path("ref.safetensors"), {{"attn.0", Tensor::from<float>({0, 1, 2, 3, 4, 5}, {1, 2, 3})}});
  std::string bytes = read_raw(path("ref.safetensors"));
  std::string header =
      R"({"__metadata__":{"format":"pt"},"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  EXPECT_EQ(bytes, file_bytes(header, bytes_of<float>({0, 1, 2, 3, 4, 5})));

  // Order: descending dtype alignment (reference enum order), then name; caller's format kept.
  save_safetensors(path("order.safetensors"),
                   {{"a", Tensor::from<uint8_t>({1})},
                    {"c", Tensor::from<float>({1})},
                    {"b", Tensor::from<float>({1})},
                    {"z", Tensor::from<int64_t>({1})},
                    {"e", Tensor::from<bf16>({bf16{1}})},
                    {"d", Tensor::from<bool>({true})},
                    {"y", Tensor::from<double>({1})},
                    {"x", Tensor::from<int32_t>({1})},
                    {"w", Tensor::from<f16>({f16{1}})}},
                   {{"format", "mlx"}, {"step", "12"}});
  SafetensorsFile file = SafetensorsFile::open(path("order.safetensors"));
  EXPECT_EQ(file.names(), (std::vector<std::string>{"z", "y", "b", "c", "x", "e", "w", "a", "d"}));
  EXPECT_EQ(file.metadata(), (std::map<std::string, std::string>{{"format", "mlx"}, {"step", "12"}}));
  std::string order_bytes = read_raw(path("order.safetensors"));
  uint64_t n = 0;
  std::memcpy(&n, order_bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(order_bytes.substr(8, 15), R"({"__metadata__")");
}

TEST_F(Safetensors, Bf16BytesAreRoundedToNearestEven) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // 1 + 2^-8 is a tie that goes to even (0x3F80); 1 + 3*2^-8 is a tie that goes up to 0x3F82;
  // NaN becomes the canonical 0x7FC0 (what PyTorch writes).
  Tensor f32 = Tensor::from<float>({1.00390625f, 1.01171875f, nan, 1.0f, -2.0f});
  save_safetensors(path("bf16.safetensors"), {{"w", f32.to(DType::BF16)}});
  std::string expected = bytes_of<uint16_t>({0x3F80, 0x3F82, 0x7FC0, 0x3F80, 0xC000});
  std::string file_bytes = read_raw(path("bf16.safetensors"));
  // The only tensor's data is the end of the file.
  EXPECT_EQ(file_bytes.substr(file_bytes.size() - 10), expected);
  SafetensorsFile file = SafetensorsFile::open(path("bf16.safetensors"));
  EXPECT_EQ(file.info("w").dtype_name, "BF16");
  EXPECT_EQ(tensor_bytes(file.tensor("w")), expected);
}

// --- files from other writers ----------------------------------------------------------------

TEST_F(Safetensors, ReadsAnIndependentWriterWithUnsortedKeysAndLeadingWhitespace) {
  // Keys in no particular order, metadata in the middle, whitespace before the '{' and after '}',
  // a header length that is not a multiple of 8.
  std::string header =
      "  \n {\"b\": {\"shape\": [2], \"dtype\": \"I32\", \"data_offsets\": [8, 16]}, "
      "\"__metadata__\": {\"source\": \"hand\", \"format\": \"pt\"}, "
      "\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}, "
      "\"s\": {\"dtype\": \"U8\", \"shape\": [], \"data_offsets\": [16, 17]}}   ";
  std::string data = bytes_of<float>({0.5f, -4.0f}) + bytes_of<int32_t>({7, -9}) + std::string(1, '\x2A');
  write_raw(path("hand.safetensors"), file_bytes(header, data));

  SafetensorsFile file = SafetensorsFile::open(path("hand.safetensors"));
  EXPECT_EQ(file.names(), (std::vector<std::string>{"a", "b", "s"}));  // by data offset
  EXPECT_EQ(file.metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"source", "hand"}}));
  EXPECT_EQ(file.tensor("a").to_vector<float>(), (std::vector<float>{0.5f, -4.0f}));
  EXPECT_EQ(file.tensor("b").to_vector<int32_t>(), (std::vector<int32_t>{7, -9}));
  EXPECT_EQ(file.tensor("s").dim(), 0);
  EXPECT_EQ(file.tensor("s").item<int>(), 42);
  EXPECT_EQ(file.info("b").begin, 8u);
  EXPECT_EQ(file.info("b").end, 16u);
}

TEST_F(Safetensors, ReadsUnalignedDataByCopyingAndAlignedDataWithoutCopying) {
  // Data starts 8-aligned (N = 128); the F32 tensor starts at data offset 1 and the F64 at 9.
  std::string header = R"({"u":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                       R"("f":{"dtype":"F32","shape":[2],"data_offsets":[1,9]},)"
                       R"("d":{"dtype":"F64","shape":[1],"data_offsets":[9,17]},)"
                       R"("g":{"dtype":"F32","shape":[1],"data_offsets":[17,21]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string data = std::string(1, '\x05') + bytes_of<float>({1.25f, -3.5f}) + bytes_of<double>({2.0 / 3.0}) +
                     bytes_of<float>({9.0f});
  write_raw(path("unaligned.safetensors"), file_bytes(header, data));

  SafetensorsFile file = SafetensorsFile::open(path("unaligned.safetensors"));
  Tensor f = file.tensor("f");
  EXPECT_EQ(f.to_vector<float>(), (std::vector<float>{1.25f, -3.5f}));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(f.raw_data()) % alignof(float), 0u);
  EXPECT_EQ(file.tensor("d").to_vector<double>(), (std::vector<double>{2.0 / 3.0}));
  EXPECT_EQ(file.tensor("u").item<int>(), 5);
  // Unaligned: each call copies. Aligned (the U8): both calls view the same mapped bytes.
  EXPECT_NE(file.tensor("f").raw_data(), f.raw_data());
  EXPECT_EQ(file.tensor("u").raw_data(), file.tensor("u").raw_data());
  // F32 at data offset 17 (from an 8-aligned data start) is unaligned too.
  EXPECT_EQ(file.tensor("g").item<float>(), 9.0f);
}

TEST_F(Safetensors, TensorsOutliveTheFileObjectAndTheFileOnDisk) {
  save_safetensors(path("t.safetensors"), {{"w", Tensor::from<float>({1, 2, 3, 4}, {2, 2})}});
  Tensor w;
  {
    SafetensorsFile file = SafetensorsFile::open(path("t.safetensors"));
    w = file.tensor("w");
  }
  fs::remove(path("t.safetensors"));
  EXPECT_EQ(w.to_vector<float>(), (std::vector<float>{1, 2, 3, 4}));
}

TEST_F(Safetensors, SavingOverAMappedFileKeepsItsTensorsValid) {
  // The writer renames a new file into place instead of truncating the old one, whose pages
  // loaded tensors may still map.
  save_safetensors(path("t.safetensors"), {{"w", Tensor::from<float>({1, 2, 3, 4})}});
  Tensor old = SafetensorsFile::open(path("t.safetensors")).tensor("w");
  save_safetensors(path("t.safetensors"), {{"w", Tensor::from<float>({9})}});
  EXPECT_EQ(old.to_vector<float>(), (std::vector<float>{1, 2, 3, 4}));
  EXPECT_EQ(SafetensorsFile::open(path("t.safetensors")).tensor("w").to_vector<float>(), (std::vector<float>{9}));
}

TEST_F(Safetensors, WritingIntoALoadedTensorLeavesTheFileUnchanged) {
  save_safetensors(path("t.safetensors"), {{"w", Tensor::from<float>({1, 2, 3, 4})}});
  std::string before = read_raw(path("t.safetensors"));
  {
    SafetensorsFile file = SafetensorsFile::open(path("t.safetensors"));
    Tensor w = file.tensor("w");
    w.fill_(5.0);
    EXPECT_EQ(w.to_vector<float>(), (std::vector<float>{5, 5, 5, 5}));
  }
  EXPECT_EQ(read_raw(path("t.safetensors")), before);
  EXPECT_EQ(SafetensorsFile::open(path("t.safetensors")).tensor("w").to_vector<float>(),
            (std::vector<float>{1, 2, 3, 4}));
}

TEST_F(Safetensors, BoolBytesOtherThanZeroAndOneReadAsTrue) {
  std::string header = R"({"m":{"dtype":"BOOL","shape":[4],"data_offsets":[0,4]}})";
  write_raw(path("b.safetensors"), file_bytes(header, std::string("\x00\x01\x02\xFF", 4)));
  Tensor m = SafetensorsFile::open(path("b.safetensors")).tensor("m");
  EXPECT_EQ(tensor_bytes(m), std::string("\x00\x01\x01\x01", 4));
}

// --- malformed files: one case each ----------------------------------------------------------

class MalformedSafetensors : public Safetensors {
 protected:
  // Writes `bytes`, expects open() to fail with a message that names the file and contains `problem`.
  void expect_error(const std::string& bytes, const std::string& problem) {
    write_raw(path("bad.safetensors"), bytes);
    std::string message = open_error(path("bad.safetensors"));
    EXPECT_EQ(message.rfind(path("bad.safetensors") + ": ", 0), 0u) << message;
    EXPECT_CONTAINS(message, problem);
  }
  // {"e1","e2",...} built by appending (GCC 12 misreports "{" + std::string as -Wrestrict).
  static std::string object_of(std::initializer_list<std::string> entries) {
    std::string out = "{";
    for (const std::string& e : entries) {
      if (out.size() > 1) out += ',';
      out += e;
    }
    out += '}';
    return out;
  }
  static std::string f32_entry(const std::string& name, const std::string& shape, uint64_t b, uint64_t e) {
    return str_cat("\"", name, "\":{\"dtype\":\"F32\",\"shape\":", shape, ",\"data_offsets\":[", b, ",", e, "]}");
  }
};

TEST_F(MalformedSafetensors, FileShorterThanTheLengthField) {
  expect_error("", "too short");
  expect_error("\x08\x00\x00", "too short");
}

TEST_F(MalformedSafetensors, TruncatedData) {
  expect_error(file_bytes(object_of({f32_entry("a", "[4]", 0, 16)}), std::string(8, '\0')),
               "file is truncated: the tensors need 16 bytes of data after the header, but the file has 8");
}

TEST_F(MalformedSafetensors, HeaderLengthLongerThanTheFile) {
  expect_error(le64(1000) + "{}", "header length 1000 runs past the end of the file (10 bytes)");
}

TEST_F(MalformedSafetensors, HeaderLengthOverTheLimit) {
  expect_error(le64(100'000'001) + "{}", "exceeds the limit of 100000000 bytes");
  expect_error(le64(~uint64_t{0}) + "{}", "exceeds the limit");
}

TEST_F(MalformedSafetensors, OverlappingOffsets) {
  std::string header = object_of({f32_entry("a", "[2]", 0, 8), f32_entry("b", "[2]", 4, 12)});
  expect_error(file_bytes(header, std::string(12, '\0')),
               "tensor 'b': data_offsets [4, 12] overlap tensor 'a', which ends at 8");
}

TEST_F(MalformedSafetensors, GappedOffsets) {
  std::string header = object_of({f32_entry("a", "[2]", 0, 8), f32_entry("b", "[2]", 12, 20)});
  expect_error(file_bytes(header, std::string(20, '\0')),
               "tensor 'b': data_offsets [12, 20] leave a gap: data bytes [8, 12) belong to no tensor");
  // A first tensor that does not start at 0 leaves a gap too.
  expect_error(file_bytes(object_of({f32_entry("a", "[2]", 4, 12)}), std::string(12, '\0')), "leave a gap");
}

TEST_F(MalformedSafetensors, SizeNotMatchingDtypeTimesShape) {
  write_raw(path("model.safetensors"),
            file_bytes(object_of({f32_entry("a.weight", "[2,2]", 0, 12)}), std::string(12, '\0')));
  EXPECT_EQ(
      open_error(path("model.safetensors")),
      path("model.safetensors") + ": tensor 'a.weight': data_offsets [0, 12] hold 12 bytes, but F32 [2, 2] needs 16");
}

TEST_F(MalformedSafetensors, EndBeforeBegin) {
  expect_error(file_bytes(object_of({f32_entry("a", "[0]", 8, 0)}), ""), "end before they begin");
}

TEST_F(MalformedSafetensors, BytesAfterTheLastTensor) {
  expect_error(file_bytes(object_of({f32_entry("a", "[1]", 0, 4)}), std::string(6, '\0')),
               "file not fully covered: 2 bytes");
}

TEST_F(MalformedSafetensors, BadJson) {
  expect_error(file_bytes(R"({"a": {"dtype": "F32",)", ""), "header is not valid JSON");
  expect_error(file_bytes(R"({"a": 1} trailing)", ""), "header is not valid JSON");
}

TEST_F(MalformedSafetensors, InvalidUtf8) {
  expect_error(file_bytes("{\"\xC3\x28\": 1}", ""), "header is not valid UTF-8 (bad byte at header offset 2)");
}

TEST_F(MalformedSafetensors, UnknownDtype) {
  expect_error(file_bytes(R"({"a":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}})", std::string(16, '\0')),
               "tensor 'a': unknown dtype 'F128'");
}

TEST_F(MalformedSafetensors, NonObjectHeader) {
  expect_error(file_bytes("[1, 2]", ""), "header is not a JSON object (got array)");
  expect_error(file_bytes("\"text\"", ""), "header is not a JSON object (got string)");
}

TEST_F(MalformedSafetensors, MetadataWithANonStringValue) {
  expect_error(file_bytes(R"({"__metadata__":{"format":"pt","step":3}})", ""),
               "__metadata__ 'step': value must be a string, got 3 (number)");
  expect_error(file_bytes(R"({"__metadata__":["pt"]})", ""), "__metadata__ must be an object of strings");
}

TEST_F(MalformedSafetensors, DuplicateKey) {
  std::string header = object_of({f32_entry("a", "[1]", 0, 4), f32_entry("a", "[1]", 4, 8)});
  expect_error(file_bytes(header, std::string(8, '\0')), "duplicate key 'a'");
  expect_error(
      file_bytes(R"({"a":{"dtype":"F32","dtype":"I32","shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0')),
      "duplicate key 'dtype'");
}

TEST_F(MalformedSafetensors, EntryFieldsOfTheWrongType) {
  expect_error(file_bytes(R"({"a":{"dtype":"F32","shape":[1]}})", ""), "tensor 'a': missing field 'data_offsets'");
  expect_error(file_bytes(R"({"a":[1]})", ""), "tensor 'a': expected an object");
  expect_error(file_bytes(R"({"a":{"dtype":5,"shape":[1],"data_offsets":[0,4]}})", ""), "field 'dtype' must be");
  expect_error(file_bytes(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", ""),
               "tensor 'a': shape[0] must be a non-negative integer, got -1");
  expect_error(file_bytes(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", ""),
               "shape[0] must be a non-negative integer");
  expect_error(file_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", ""),
               "field 'data_offsets' must be [begin, end]");
  expect_error(file_bytes(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", ""),
               "more elements than fit in 64 bits");
}

TEST_F(Safetensors, ValidDtypesThatBvllmLacksOpenButDoNotLoad) {
  std::string header = R"({"q":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]},)"
                       R"("p":{"dtype":"F4","shape":[2],"data_offsets":[2,3]},)"
                       R"("w":{"dtype":"F32","shape":[1],"data_offsets":[3,7]}})";
  write_raw(path("fp8.safetensors"), file_bytes(header, std::string(7, '\0')));
  SafetensorsFile file = SafetensorsFile::open(path("fp8.safetensors"));
  EXPECT_EQ(file.info("q").dtype_name, "F8_E4M3");
  EXPECT_FALSE(file.info("q").dtype.has_value());
  EXPECT_EQ(file.tensor("w").item<float>(), 0.0f);
  try {
    file.tensor("q");
    ADD_FAILURE() << "F8_E4M3 loaded";
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.what(), "tensor 'q': unsupported dtype F8_E4M3");
  }
  try {
    file.tensor("nope");
    ADD_FAILURE() << "missing tensor loaded";
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.what(), "no tensor named 'nope'");
  }
  // F4 x 3 is 12 bits: not whole bytes.
  write_raw(path("f4.safetensors"),
            file_bytes(R"({"p":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}})", std::string(2, '\0')));
  EXPECT_CONTAINS(open_error(path("f4.safetensors")), "does not fill a whole number of bytes");
}

TEST_F(Safetensors, NeverCrashesOnTruncatedOrCorruptedFiles) {
  save_safetensors(path("good.safetensors"), {{"a", Tensor::from<float>({1, 2, 3})},
                                              {"b", Tensor::from<bool>({true, false})},
                                              {"c", Tensor::scalar<int64_t>(5)},
                                              {"d", Tensor::from<bf16>({bf16{1}, bf16{2}})}});
  const std::string good = read_raw(path("good.safetensors"));
  for (size_t len = 0; len < good.size(); ++len) {
    write_raw(path("cut.safetensors"), good.substr(0, len));
    EXPECT_FALSE(open_error(path("cut.safetensors")).empty()) << "length " << len;
  }
  std::mt19937 rng(1234);
  int opened = 0;
  for (int trial = 0; trial < 1000; ++trial) {
    std::string bytes = good;
    int flips = 1 + static_cast<int>(rng() % 3);
    for (int f = 0; f < flips; ++f) {
      size_t at = rng() % bytes.size();
      bytes[at] = static_cast<char>(rng() % 256);
    }
    write_raw(path("fuzz.safetensors"), bytes);
    try {
      SafetensorsFile file = SafetensorsFile::open(path("fuzz.safetensors"));
      for (const std::string& name : file.names()) file.tensor(name).contiguous();
      ++opened;
    } catch (const Error&) {
    }
  }
  EXPECT_GT(opened, 0);  // flips inside the data section leave a valid file
}

// --- writer safety ---------------------------------------------------------------------------

TEST_F(Safetensors, SaveReplacesTheFileWholeAndLeavesNoTmp) {
  const std::string target = path("w.safetensors");
  save_safetensors(target, {{"old", Tensor::from<float>({1})}});
  save_safetensors(target, {{"new", Tensor::from<float>({2, 3})}});
  EXPECT_FALSE(fs::exists(target + ".tmp"));
  EXPECT_EQ(SafetensorsFile::open(target).names(), (std::vector<std::string>{"new"}));

  // A save that fails keeps the previous file and leaves no .tmp behind.
  const std::string before = read_raw(target);
  try {
    save_safetensors(target, {{"x", Tensor::from<float>({1})}, {"x", Tensor::from<float>({2})}});
    ADD_FAILURE() << "duplicate names saved";
  } catch (const Error& e) {
    EXPECT_CONTAINS(e.what(), "tensor name 'x' appears twice");
  }
  EXPECT_EQ(read_raw(target), before);
  EXPECT_FALSE(fs::exists(target + ".tmp"));
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(dir_)) files.push_back(entry.path().filename().string());
  EXPECT_EQ(files, (std::vector<std::string>{"w.safetensors"}));
}

TEST_F(Safetensors, SaveRejectsBadNamesAndPaths) {
  auto error_of = [&](const std::string& p, const NamedTensors& tensors) -> std::string {
    try {
      save_safetensors(p, tensors);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_CONTAINS(error_of(path("a.safetensors"), {{"__metadata__", Tensor::from<float>({1})}}),
                  "may not be named __metadata__");
  EXPECT_CONTAINS(error_of(path("a.safetensors"), {{"u", Tensor()}}), "tensor 'u' is undefined");
  EXPECT_CONTAINS(error_of(path("no/such/dir/a.safetensors"), {{"u", Tensor::from<float>({1})}}),
                  "no/such/dir/a.safetensors.tmp: cannot create");
}

// --- sharded checkpoints ---------------------------------------------------------------------

NamedTensors shard_test_tensors() {
  std::vector<float> big(50);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<float>(i);
  return {
      {"a", ops::full({10}, 1.0)},                         // 40 bytes
      {"b", ops::full({10}, 2.0)},                         // 40
      {"big", Tensor::from(std::span<const float>(big))},  // 200: over the limit, a shard of its own
      {"c", Tensor::from<int64_t>({1, 2, 3, 4, 5})},       // 40
      {"d", ops::full({4}, 0.5, DType::BF16)},             // 8
  };
}

TEST_F(Safetensors, ShardedSaveFollowsTheHuggingFaceLayoutAndLoadsBack) {
  const std::string dir = path("ckpt");
  NamedTensors tensors = shard_test_tensors();
  save_sharded_safetensors(dir, tensors, /*max_shard_bytes=*/100);

  // huggingface_hub: a(40)+b(40) fill shard 2 after "big" took shard 1; c would tip it over 100.
  const std::string s1 = "model-00001-of-00003.safetensors", s2 = "model-00002-of-00003.safetensors",
                    s3 = "model-00003-of-00003.safetensors";
  EXPECT_EQ(SafetensorsFile::open(dir + "/" + s1).names(), (std::vector<std::string>{"big"}));
  EXPECT_EQ(SafetensorsFile::open(dir + "/" + s2).names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(SafetensorsFile::open(dir + "/" + s3).names(), (std::vector<std::string>{"c", "d"}));
  EXPECT_EQ(SafetensorsFile::open(dir + "/" + s3).metadata().at("format"), "pt");
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors"));

  const std::string index_text = read_raw(dir + "/model.safetensors.index.json");
  nlohmann::json expected = {
      {"metadata", {{"total_size", 328}}},
      {"weight_map", {{"a", s2}, {"b", s2}, {"big", s1}, {"c", s3}, {"d", s3}}},
  };
  EXPECT_EQ(nlohmann::json::parse(index_text), expected);
  EXPECT_EQ(index_text, expected.dump(2) + "\n");  // json.dumps(indent=2, sort_keys=True) + "\n"

  auto loaded = load_safetensors_dir(dir);
  ASSERT_EQ(loaded.size(), tensors.size());
  for (const auto& [name, t] : tensors) EXPECT_EQ(tensor_bytes(loaded.at(name)), tensor_bytes(t)) << name;

  // Saving again as a single shard replaces the sharded files; and back again.
  save_sharded_safetensors(dir, tensors);
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(dir)) files.push_back(entry.path().filename().string());
  EXPECT_EQ(files, (std::vector<std::string>{"model.safetensors"}));
  EXPECT_EQ(load_safetensors_dir(dir).size(), tensors.size());
  save_sharded_safetensors(dir, tensors, 100);
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors"));
  EXPECT_EQ(load_safetensors_dir(dir).size(), tensors.size());
  for (const auto& entry : fs::directory_iterator(dir))
    EXPECT_FALSE(entry.path().string().ends_with(".tmp")) << entry.path();
}

TEST_F(Safetensors, ShardedLoadNamesTheIndexAndTheMissingPiece) {
  const std::string dir = path("ckpt");
  save_sharded_safetensors(dir, shard_test_tensors(), 100);
  const std::string index = dir + "/model.safetensors.index.json";
  auto load_error = [&]() -> std::string {
    try {
      load_safetensors_dir(dir);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };

  // A tensor that the index places in a shard that does not hold it.
  nlohmann::json j = nlohmann::json::parse(read_raw(index));
  j["weight_map"]["a"] = "model-00003-of-00003.safetensors";
  write_raw(index, j.dump(2));
  std::string message = load_error();
  EXPECT_EQ(message.rfind(index + ": ", 0), 0u) << message;
  EXPECT_CONTAINS(message, "weight_map puts 'a' in 'model-00003-of-00003.safetensors', which has no such tensor");

  // A missing shard.
  fs::remove(dir + "/model-00003-of-00003.safetensors");
  message = load_error();
  EXPECT_EQ(message.rfind(index + ": ", 0), 0u) << message;
  EXPECT_CONTAINS(message, "shard 'model-00003-of-00003.safetensors'");
  EXPECT_CONTAINS(message, "is missing");

  // Neither file.
  fs::remove(index);
  EXPECT_CONTAINS(load_error(), "neither model.safetensors nor model.safetensors.index.json exists");
}

}  // namespace
}  // namespace bvllm
