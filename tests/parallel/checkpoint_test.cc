// Checkpoint directories: round trips of f32/bf16/i64 tensors and texts, the manifest against the
// files, latest and keep_last, leftovers and damaged steps (a step without manifest, a truncated
// or replaced safetensors, a bad latest pointer), load errors that name the file and the tensor or
// field, overwriting a step, and a saver killed at random moments (SIGKILL) that never leaves
// `latest` naming anything but a complete checkpoint of the right contents.
#include "parallel/checkpoint.h"

#include <google/protobuf/text_format.h>
#include <gtest/gtest.h>
#include <signal.h>    // defines: kill, SIGKILL
#include <sys/wait.h>  // defines: waitpid
#include <unistd.h>    // defines: fork, getpid, _exit

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "tests/support/messages.h"

namespace bvllm::parallel {
namespace {

using testing::has;

namespace fs = std::filesystem;
using testing::error_of;

// Whether `text` contains `part`, printing both when it does not.
class CheckpointDir : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) / str_cat("bvllm_checkpoint_", ::getpid(), "_", info->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir() const { return dir_.string(); }
  std::string step_path(int64_t step) const { return (dir_ / checkpoint_dir_name(step)).string(); }

  fs::path dir_;
};

std::string read_raw(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_raw(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

// The logical bytes of a tensor (row-major), whatever its strides.
std::string tensor_bytes(const Tensor& t) {
  Tensor c = t.contiguous();
  std::string s(c.nbytes(), '\0');
  if (!s.empty()) std::memcpy(s.data(), c.raw_data(), s.size());
  return s;
}

// The entries of `dir` whose names start with `prefix`.
std::vector<std::string> entries_with_prefix(const fs::path& dir, const std::string& prefix) {
  std::vector<std::string> out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    std::string name = entry.path().filename().string();
    if (name.starts_with(prefix)) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// A checkpoint whose every value depends on `step`, so a load can tell which step it read.
Checkpoint make_checkpoint(int64_t step, int64_t n = 6) {
  std::vector<float> w(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) w[i] = static_cast<float>(step) + 0.25f * static_cast<float>(i);
  Checkpoint c;
  c.step = step;
  c.tensors["model"] = {{"w", Tensor::from<float>(w)}, {"b", Tensor::from<float>({static_cast<float>(-step)})}};
  c.tensors["optimizer"] = {{"step", Tensor::from<int64_t>({step})}};
  c.texts["trainer.json"] = str_cat("{\"step\": ", step, "}");
  return c;
}

float first_weight(const Checkpoint& c) { return c.tensors.at("model").at(0).second.to_vector<float>().at(0); }

// Rewrites manifest.pb of `step_dir` after `edit` changed it.
template <typename F>
void edit_manifest(const std::string& step_dir, F&& edit) {
  CheckpointManifest manifest = read_checkpoint_manifest(step_dir);
  edit(manifest);
  std::string text;
  ASSERT_TRUE(google::protobuf::TextFormat::PrintToString(manifest, &text));
  write_raw((fs::path(step_dir) / "manifest.pb").string(), text);
}

// Sets the manifest's recorded size of `name` to the file's size now (after a test replaced it).
void resync_size(const std::string& step_dir, const std::string& name) {
  edit_manifest(step_dir, [&](CheckpointManifest& m) {
    for (CheckpointFile& f : *m.mutable_files()) {
      if (f.name() == name) f.set_bytes(fs::file_size(fs::path(step_dir) / name));
    }
  });
}

// --- round trips -----------------------------------------------------------------------------

TEST_F(CheckpointDir, RoundTripsF32Bf16I64TensorsAndTexts) {
  Checkpoint c;
  c.step = 7;
  NamedTensors model = {
      // Caller's order, not sorted: the load must give it back.
      {"layers.0.weight", Tensor::from<float>({1.5f, -2.25f, 3.0f, 1e-30f, -0.0f, 7.0f}, {2, 3})},
      {"embed", Tensor::from<float>({0.1f, 0.2f, 0.3f, 0.4f}, {2, 2}).to(DType::BF16)},
      {"a.scalar", Tensor::scalar<float>(42.0f)},
      {"empty", Tensor::empty({0, 3}, DType::F32)},
      {"transposed", Tensor::from<float>({0, 1, 2, 3, 4, 5}, {2, 3}).transpose(0, 1)},
  };
  NamedTensors optimizer = {
      {"exp_avg.embed", Tensor::from<float>({-1.0f, 2.0f, 0.5f, 1e-8f}, {2, 2})},
      {"step", Tensor::from<int64_t>({int64_t{1} << 40, -3})},
  };
  c.tensors["model"] = model;
  c.tensors["optimizer"] = optimizer;
  c.texts["trainer.json"] = R"({"step": 7, "rng": [1, 2, 3]})";
  c.texts["recipe.pb"] = "name: \"tiny\"\n";
  c.texts["binary.bin"] = std::string("a\0b\xff\n", 5);
  c.texts["empty.txt"] = "";

  const std::string path = save_checkpoint(dir(), c);
  EXPECT_EQ(path, step_path(7));
  EXPECT_EQ(fs::path(path).filename().string(), "step-00000007");
  EXPECT_EQ(read_raw((dir_ / "latest").string()), "step-00000007\n");

  // Loaded from the step directory and from the checkpoint directory alike.
  for (const std::string& from : {path, dir()}) {
    SCOPED_TRACE(from);
    Checkpoint back = load_checkpoint(from);
    EXPECT_EQ(back.step, 7);
    EXPECT_EQ(back.texts, c.texts);
    ASSERT_EQ(back.tensors.size(), 2u);
    for (const auto& [stem, expected] : c.tensors) {
      SCOPED_TRACE(stem);
      const NamedTensors& got = back.tensors.at(stem);
      ASSERT_EQ(got.size(), expected.size());
      for (size_t i = 0; i < got.size(); ++i) {
        SCOPED_TRACE(expected[i].first);
        EXPECT_EQ(got[i].first, expected[i].first);
        EXPECT_EQ(got[i].second.dtype(), expected[i].second.dtype());
        EXPECT_EQ(got[i].second.shape(), expected[i].second.shape());
        EXPECT_TRUE(got[i].second.device().is_cpu());
        EXPECT_EQ(tensor_bytes(got[i].second), tensor_bytes(expected[i].second));
      }
    }
    EXPECT_EQ(back.tensors.at("model").at(4).second.to_vector<float>(), (std::vector<float>{0, 3, 1, 4, 2, 5}));
    EXPECT_EQ(back.tensors.at("optimizer").at(1).second.to_vector<int64_t>(),
              (std::vector<int64_t>{int64_t{1} << 40, -3}));
  }

  // The files are what they claim to be: plain safetensors and the texts' bytes.
  auto st = load_safetensors(path + "/model.safetensors");
  EXPECT_EQ(st.size(), model.size());
  EXPECT_EQ(st.at("embed").dtype(), DType::BF16);
  EXPECT_EQ(read_raw(path + "/binary.bin"), c.texts["binary.bin"]);
  EXPECT_TRUE(entries_with_prefix(dir_, ".tmp-").empty());
}

TEST_F(CheckpointDir, ManifestListsEveryFileWithItsSizeAndEveryTensorWhole) {
  save_checkpoint(dir(), make_checkpoint(3));
  const std::string step_dir = step_path(3);
  CheckpointManifest m = read_checkpoint_manifest(step_dir);
  EXPECT_EQ(m.format_version(), kCheckpointFormatVersion);
  EXPECT_EQ(m.step(), 3);

  std::set<std::string> names;
  for (const CheckpointFile& f : m.files()) {
    names.insert(f.name());
    EXPECT_EQ(f.bytes(), fs::file_size(fs::path(step_dir) / f.name())) << f.name();
    EXPECT_EQ(f.kind(), f.name().ends_with(".safetensors") ? CheckpointFile::TENSORS : CheckpointFile::TEXT);
  }
  // Exactly the directory's files besides the manifest itself.
  std::set<std::string> on_disk;
  for (const auto& entry : fs::directory_iterator(step_dir)) on_disk.insert(entry.path().filename().string());
  on_disk.erase("manifest.pb");
  EXPECT_EQ(names, on_disk);
  EXPECT_EQ(names, (std::set<std::string>{"model.safetensors", "optimizer.safetensors", "trainer.json"}));

  ASSERT_EQ(m.tensors_size(), 3);
  const CheckpointTensor& w = m.tensors(0);
  EXPECT_EQ(w.name(), "w");
  EXPECT_EQ(w.file(), "model.safetensors");
  EXPECT_EQ(w.dtype(), "F32");
  EXPECT_EQ(std::vector<int64_t>(w.shape().begin(), w.shape().end()), (std::vector<int64_t>{6}));
  EXPECT_EQ(std::vector<int64_t>(w.slice_start().begin(), w.slice_start().end()), (std::vector<int64_t>{0}));
  EXPECT_EQ(std::vector<int64_t>(w.slice_size().begin(), w.slice_size().end()), (std::vector<int64_t>{6}));
  EXPECT_EQ(m.tensors(2).file(), "optimizer.safetensors");
  EXPECT_EQ(m.tensors(2).dtype(), "I64");
}

TEST_F(CheckpointDir, EmptyCheckpointAndLargeStepNumbers) {
  Checkpoint c;
  c.step = 123456789;  // more than 8 digits: the name grows, the order stays numeric
  save_checkpoint(dir(), c);
  save_checkpoint(dir(), make_checkpoint(99999999));
  EXPECT_TRUE(fs::is_directory(dir_ / "step-123456789"));
  // `latest` names the last save, even though it has the lower step.
  EXPECT_EQ(latest_checkpoint(dir()), step_path(99999999));
  fs::remove(dir_ / "latest");
  EXPECT_EQ(latest_checkpoint(dir()), step_path(123456789));  // without it: the highest step
  Checkpoint back = load_checkpoint(step_path(123456789));
  EXPECT_EQ(back.step, 123456789);
  EXPECT_TRUE(back.tensors.empty());
  EXPECT_TRUE(back.texts.empty());
}

// --- latest and keep_last ----------------------------------------------------------------------

TEST_F(CheckpointDir, LatestIsTheLastOfThreeSaves) {
  EXPECT_EQ(latest_checkpoint(dir()), std::nullopt);  // no directory yet
  for (int64_t step : {10, 20, 30}) {
    save_checkpoint(dir(), make_checkpoint(step));
    EXPECT_EQ(latest_checkpoint(dir()), step_path(step));
  }
  EXPECT_EQ(list_checkpoints(dir()), (std::vector<std::string>{step_path(10), step_path(20), step_path(30)}));
  Checkpoint back = load_checkpoint(dir());
  EXPECT_EQ(back.step, 30);
  EXPECT_EQ(first_weight(back), 30.0f);
  EXPECT_EQ(back.texts.at("trainer.json"), "{\"step\": 30}");
  EXPECT_EQ(first_weight(load_checkpoint(step_path(20))), 20.0f);
}

TEST_F(CheckpointDir, KeepLastDeletesTheOldestAfterLatestMoved) {
  for (int64_t step = 1; step <= 5; ++step) save_checkpoint(dir(), make_checkpoint(step), {.keep_last = 2});
  EXPECT_EQ(entries_with_prefix(dir_, "step-"), (std::vector<std::string>{"step-00000004", "step-00000005"}));
  EXPECT_EQ(latest_checkpoint(dir()), step_path(5));

  // A run resumed from an earlier step: directories of higher steps are not the new run's to
  // delete, and `latest` names the new save although step 10 is higher.
  save_checkpoint(dir(), make_checkpoint(10), {.keep_last = 2});
  EXPECT_EQ(entries_with_prefix(dir_, "step-"), (std::vector<std::string>{"step-00000005", "step-00000010"}));
  save_checkpoint(dir(), make_checkpoint(6), {.keep_last = 2});
  EXPECT_EQ(entries_with_prefix(dir_, "step-"),
            (std::vector<std::string>{"step-00000005", "step-00000006", "step-00000010"}));
  EXPECT_EQ(latest_checkpoint(dir()), step_path(6));
  EXPECT_EQ(load_checkpoint(dir()).step, 6);

  // keep_last 1 keeps only the new one among lower steps; 0 keeps everything.
  save_checkpoint(dir(), make_checkpoint(7), {.keep_last = 0});
  EXPECT_EQ(entries_with_prefix(dir_, "step-").size(), 4u);
  save_checkpoint(dir(), make_checkpoint(8), {.keep_last = 1});
  EXPECT_EQ(entries_with_prefix(dir_, "step-"), (std::vector<std::string>{"step-00000008", "step-00000010"}));
}

// --- interrupted saves and damage ----------------------------------------------------------------

TEST_F(CheckpointDir, LeftoverTmpDirectoryIsIgnoredThenRemovedByTheNextSave) {
  save_checkpoint(dir(), make_checkpoint(1));
  // What a save killed while writing step 2 leaves: a .tmp- directory, even with a manifest.
  const fs::path tmp = dir_ / ".tmp-step-00000002-999999";
  fs::copy(step_path(1), tmp);
  write_raw((dir_ / ".tmp-latest-999999").string(), "step-00000002\n");
  EXPECT_EQ(latest_checkpoint(dir()), step_path(1));
  EXPECT_EQ(list_checkpoints(dir()), std::vector<std::string>{step_path(1)});
  EXPECT_EQ(load_checkpoint(dir()).step, 1);

  save_checkpoint(dir(), make_checkpoint(2));
  EXPECT_TRUE(entries_with_prefix(dir_, ".tmp-").empty());
  EXPECT_EQ(load_checkpoint(dir()).step, 2);
}

TEST_F(CheckpointDir, StepWithoutManifestIsSkippedAndItsLoadSaysSo) {
  save_checkpoint(dir(), make_checkpoint(1));
  save_checkpoint(dir(), make_checkpoint(2));
  // A step directory that is not complete (no manifest.pb), newer than the last good one, and a
  // `latest` that even names it (as a hand-edited or foreign directory might).
  fs::copy(step_path(2), step_path(3));
  fs::remove(fs::path(step_path(3)) / "manifest.pb");
  EXPECT_EQ(latest_checkpoint(dir()), step_path(2));
  write_raw((dir_ / "latest").string(), "step-00000003\n");
  EXPECT_EQ(latest_checkpoint(dir()), step_path(2));
  EXPECT_EQ(load_checkpoint(dir()).step, 2);
  EXPECT_EQ(list_checkpoints(dir()), (std::vector<std::string>{step_path(1), step_path(2)}));

  std::string e = error_of([&] { load_checkpoint(step_path(3)); });
  EXPECT_TRUE(has(e, step_path(3) + "/manifest.pb"));
  EXPECT_TRUE(has(e, "missing"));
}

TEST_F(CheckpointDir, TruncatedSafetensorsFallsBackToThePreviousStepAndNamesTheFile) {
  save_checkpoint(dir(), make_checkpoint(1));
  save_checkpoint(dir(), make_checkpoint(2));
  const std::string file = step_path(2) + "/model.safetensors";
  fs::resize_file(file, fs::file_size(file) - 4);
  EXPECT_EQ(latest_checkpoint(dir()), step_path(1));
  EXPECT_EQ(first_weight(load_checkpoint(dir())), 1.0f);

  std::string e = error_of([&] { load_checkpoint(step_path(2)); });
  EXPECT_TRUE(has(e, file));
  EXPECT_TRUE(has(e, "truncated"));
  EXPECT_TRUE(has(e, "bytes"));

  // Damage in every step: loading the directory says which file of the newest is wrong.
  fs::remove(step_path(1) + "/trainer.json");
  EXPECT_EQ(latest_checkpoint(dir()), std::nullopt);
  e = error_of([&] { load_checkpoint(dir()); });
  EXPECT_TRUE(has(e, "no complete checkpoint"));
  EXPECT_TRUE(has(e, file));
}

TEST_F(CheckpointDir, BadLatestPointerFallsBackToTheHighestCompleteStep) {
  save_checkpoint(dir(), make_checkpoint(4));
  save_checkpoint(dir(), make_checkpoint(5));
  for (const char* text : {"", "step-00000009\n", "../step-00000004\n", "garbage"}) {
    SCOPED_TRACE(text);
    write_raw((dir_ / "latest").string(), text);
    EXPECT_EQ(latest_checkpoint(dir()), step_path(5));
  }
}

// --- load errors name the file and the tensor or field -------------------------------------------

TEST_F(CheckpointDir, MissingAndResizedFilesAreNamed) {
  save_checkpoint(dir(), make_checkpoint(1));
  const std::string step_dir = step_path(1);
  fs::remove(step_dir + "/optimizer.safetensors");
  std::string e = error_of([&] { load_checkpoint(step_dir); });
  EXPECT_TRUE(has(e, step_dir + "/optimizer.safetensors"));
  EXPECT_TRUE(has(e, "missing"));

  save_checkpoint(dir(), make_checkpoint(1));  // whole again
  write_raw(step_dir + "/trainer.json", "{\"step\": 1, \"more\": true}");
  e = error_of([&] { load_checkpoint(step_dir); });
  EXPECT_TRUE(has(e, step_dir + "/trainer.json"));
  EXPECT_TRUE(has(e, "overwritten"));
}

TEST_F(CheckpointDir, TensorMissingExtraMisShapedOrRetypedIsNamed) {
  struct Case {
    const char* what;
    NamedTensors file;  // what model.safetensors holds instead of {w [6] F32, b [1] F32}
    std::vector<std::string> expect;
  };
  const Tensor b = Tensor::from<float>({-1.0f});
  const Tensor w = Tensor::from<float>({1, 2, 3, 4, 5, 6});
  const std::vector<Case> cases = {
      {"missing", {{"b", b}}, {"tensor 'w' missing"}},
      {"extra", {{"w", w}, {"b", b}, {"stray", b}}, {"tensor 'stray' is not in manifest.pb"}},
      {"renamed", {{"v", w}, {"b", b}}, {"tensor 'w' missing"}},
      {"mis-shaped", {{"w", w.reshape({2, 3})}, {"b", b}}, {"tensor 'w'", "[2, 3]", "[6]"}},
      {"retyped", {{"w", w.to(DType::BF16)}, {"b", b}}, {"tensor 'w'", "BF16", "F32"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    save_checkpoint(dir(), make_checkpoint(1));
    const std::string step_dir = step_path(1);
    const std::string file = step_dir + "/model.safetensors";
    save_safetensors(file, c.file);
    resync_size(step_dir, "model.safetensors");  // so that the size check passes
    std::string e = error_of([&] { load_checkpoint(step_dir); });
    EXPECT_TRUE(has(e, file));
    for (const std::string& part : c.expect) EXPECT_TRUE(has(e, part));
  }
}

TEST_F(CheckpointDir, ManifestErrorsNameTheFieldOrPosition) {
  save_checkpoint(dir(), make_checkpoint(2));
  const std::string step_dir = step_path(2);
  const std::string manifest = step_dir + "/manifest.pb";
  const std::string good = read_raw(manifest);

  write_raw(manifest, good + "\nbogus_field: 1\n");
  std::string e = error_of([&] { load_checkpoint(step_dir); });
  EXPECT_TRUE(has(e, manifest + ":"));
  EXPECT_TRUE(has(e, "bogus_field"));

  write_raw(manifest, good);
  edit_manifest(step_dir, [](CheckpointManifest& m) { m.set_format_version(2); });
  e = error_of([&] { load_checkpoint(step_dir); });
  EXPECT_TRUE(has(e, manifest));
  EXPECT_TRUE(has(e, "format_version is 2, expected 1"));

  write_raw(manifest, good);
  edit_manifest(step_dir, [](CheckpointManifest& m) { m.set_step(3); });
  e = error_of([&] { load_checkpoint(step_dir); });
  EXPECT_TRUE(has(e, manifest));
  EXPECT_TRUE(has(e, "step-00000002"));

  write_raw(manifest, good);
  edit_manifest(step_dir, [](CheckpointManifest& m) { m.mutable_tensors(0)->set_file("nowhere.safetensors"); });
  e = error_of([&] { load_checkpoint(step_dir); });
  EXPECT_TRUE(has(e, "tensors.file 'nowhere.safetensors'"));

  write_raw(manifest, good);
  edit_manifest(step_dir, [](CheckpointManifest& m) { m.mutable_files(0)->set_name("../escape.safetensors"); });
  e = error_of([&] { load_checkpoint(step_dir); });
  EXPECT_TRUE(has(e, "files.name '../escape.safetensors'"));

  write_raw(manifest, good);
  edit_manifest(step_dir, [](CheckpointManifest& m) { m.mutable_tensors(0)->set_slice_size(0, 3); });
  e = error_of([&] { load_checkpoint(step_dir); });
  EXPECT_TRUE(has(e, "tensor 'w' is a slice"));

  write_raw(manifest, good);
  EXPECT_EQ(load_checkpoint(step_dir).step, 2);

  e = error_of([&] { load_checkpoint(dir() + "/nope"); });
  EXPECT_TRUE(has(e, dir() + "/nope"));
  fs::create_directories(dir_ / "empty");
  e = error_of([&] { load_checkpoint(dir() + "/empty"); });
  EXPECT_TRUE(has(e, "no checkpoint here"));
}

// --- overwriting and refusing ------------------------------------------------------------------------

TEST_F(CheckpointDir, OverwritingAStepReplacesItWhole) {
  save_checkpoint(dir(), make_checkpoint(5, 1000));
  Checkpoint before = load_checkpoint(dir());  // holds views of the files about to be replaced

  Checkpoint c;
  c.step = 5;
  c.tensors["model"] = {{"w", Tensor::from<float>({-9.0f})}};
  c.texts["notes.txt"] = "second";
  EXPECT_EQ(save_checkpoint(dir(), c), step_path(5));

  Checkpoint after = load_checkpoint(dir());
  EXPECT_EQ(after.step, 5);
  EXPECT_EQ(after.tensors.size(), 1u);  // no optimizer left over from the first save
  EXPECT_EQ(first_weight(after), -9.0f);
  EXPECT_EQ(after.texts, c.texts);
  EXPECT_EQ(entries_with_prefix(step_path(5), ""),
            (std::vector<std::string>{"manifest.pb", "model.safetensors", "notes.txt"}));
  EXPECT_TRUE(entries_with_prefix(dir_, ".tmp-").empty());
  EXPECT_EQ(entries_with_prefix(dir_, "step-"), std::vector<std::string>{"step-00000005"});
  // The earlier load still reads the earlier values (its files were replaced, not rewritten).
  EXPECT_EQ(first_weight(before), 5.0f);
  EXPECT_EQ(before.tensors.at("model").at(0).second.to_vector<float>().at(999), 5.0f + 0.25f * 999);
}

TEST_F(CheckpointDir, BadNamesAndFailedSavesLeaveTheDirectoryAsItWas) {
  save_checkpoint(dir(), make_checkpoint(1));
  const std::string latest = read_raw((dir_ / "latest").string());
  auto with = [](auto edit) {
    Checkpoint c = make_checkpoint(2);
    edit(c);
    return c;
  };
  struct Case {
    const char* what;
    Checkpoint checkpoint;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {"slash in stem", with([](Checkpoint& c) { c.tensors["a/b"] = {}; }), "tensors stem 'a/b'"},
      {"dot-dot text", with([](Checkpoint& c) { c.texts[".."] = "x"; }), "text name '..'"},
      {"manifest text", with([](Checkpoint& c) { c.texts["manifest.pb"] = "x"; }), "manifest.pb"},
      {"clash", with([](Checkpoint& c) { c.texts["model.safetensors"] = "x"; }), "model.safetensors"},
      {"negative step", with([](Checkpoint& c) { c.step = -1; }), "step -1"},
      {"duplicate tensor", with([](Checkpoint& c) { c.tensors["model"].push_back(c.tensors["model"][0]); }),
       "'w' appears twice"},
      {"undefined tensor", with([](Checkpoint& c) { c.tensors["model"].emplace_back("u", Tensor()); }),
       "'u' is undefined"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    std::string e = error_of([&] { save_checkpoint(dir(), c.checkpoint); });
    EXPECT_TRUE(has(e, c.expect));
    EXPECT_EQ(entries_with_prefix(dir_, "step-"), std::vector<std::string>{"step-00000001"});
    EXPECT_TRUE(entries_with_prefix(dir_, ".tmp-").empty());
    EXPECT_EQ(read_raw((dir_ / "latest").string()), latest);
  }
  EXPECT_TRUE(has(error_of([&] { save_checkpoint(dir(), make_checkpoint(2), {.keep_last = -1}); }), "keep_last"));
}

// --- a crash at each stage of a save ---------------------------------------------------------------

// Runs save(options) in a child process that dies at once (as if killed) when the save reports
// `stage`; fails the test when the child got there otherwise.
void crash_at(const std::string& stage, const std::function<void(const CheckpointSaveOptions&)>& save) {
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    CheckpointSaveOptions options{.keep_last = 2};
    options.on_stage = [&](const std::string& s) {
      if (s == stage) ::_exit(0);
    };
    try {
      save(options);
    } catch (...) {
      ::_exit(3);
    }
    ::_exit(4);  // the stage never came
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "stage " << stage << ": status " << status;
}

// The checkpoint `latest` names, which must load (checked against its manifest).
Checkpoint load_named_by_latest(const fs::path& dir) {
  std::string name = read_raw((dir / "latest").string());
  EXPECT_TRUE(name.ends_with("\n")) << name;
  if (!name.empty()) name.pop_back();
  Checkpoint c = load_checkpoint((dir / name).string());
  EXPECT_EQ(checkpoint_dir_name(c.step), name);
  EXPECT_EQ(latest_checkpoint(dir.string()), (dir / name).string());
  return c;
}

TEST_F(CheckpointDir, CrashAtEachStageLeavesLatestNamingACompleteCheckpoint) {
  // The stages of a save, recorded from one that runs through.
  std::vector<std::string> stages;
  CheckpointSaveOptions recording;
  recording.on_stage = [&](const std::string& s) { stages.push_back(s); };
  save_checkpoint((dir_ / "scratch").string(), make_checkpoint(1), recording);
  fs::remove_all(dir_ / "scratch");
  EXPECT_EQ(stages,
            (std::vector<std::string>{"wrote model.safetensors", "wrote optimizer.safetensors", "wrote trainer.json",
                                      "wrote manifest.pb", "directory", "latest", "done"}));
  const auto latest_at = std::find(stages.begin(), stages.end(), "latest") - stages.begin();
  const auto directory_at = std::find(stages.begin(), stages.end(), "directory") - stages.begin();

  for (size_t i = 0; i < stages.size(); ++i) {
    SCOPED_TRACE(stages[i]);
    const bool latest_moved = static_cast<std::ptrdiff_t>(i) >= latest_at;
    const bool directory_moved = static_cast<std::ptrdiff_t>(i) >= directory_at;

    // A new step after two (keep_last 2: step 1 goes only after `latest` names step 3).
    fs::remove_all(dir_);
    save_checkpoint(dir(), make_checkpoint(1));
    save_checkpoint(dir(), make_checkpoint(2));
    crash_at(stages[i], [&](const CheckpointSaveOptions& o) { save_checkpoint(dir(), make_checkpoint(3), o); });
    Checkpoint c = load_named_by_latest(dir_);
    EXPECT_EQ(c.step, latest_moved ? 3 : 2);
    EXPECT_EQ(first_weight(c), static_cast<float>(c.step));
    EXPECT_EQ(fs::exists(step_path(1)), stages[i] != "done");
    save_checkpoint(dir(), make_checkpoint(4), {.keep_last = 2});  // the next save cleans up
    EXPECT_TRUE(entries_with_prefix(dir_, ".tmp-").empty());
    EXPECT_EQ(load_checkpoint(dir()).step, 4);

    // The step `latest` names, saved again with other contents: always complete, old or new.
    fs::remove_all(dir_);
    save_checkpoint(dir(), make_checkpoint(1));
    save_checkpoint(dir(), make_checkpoint(2));
    Checkpoint second = make_checkpoint(2);
    second.texts["trainer.json"] = "second";
    crash_at(stages[i], [&](const CheckpointSaveOptions& o) { save_checkpoint(dir(), second, o); });
    c = load_named_by_latest(dir_);
    EXPECT_EQ(c.step, 2);
    EXPECT_EQ(c.texts.at("trainer.json"), directory_moved ? "second" : "{\"step\": 2}");
    save_checkpoint(dir(), make_checkpoint(3));
    EXPECT_TRUE(entries_with_prefix(dir_, ".tmp-").empty());

    // The first save into an empty directory: before `latest` exists, the complete step directory
    // (if already renamed into place) is still found.
    fs::remove_all(dir_);
    crash_at(stages[i], [&](const CheckpointSaveOptions& o) { save_checkpoint(dir(), make_checkpoint(1), o); });
    EXPECT_EQ(fs::exists(dir_ / "latest"), latest_moved);
    EXPECT_EQ(latest_checkpoint(dir()), directory_moved ? std::optional<std::string>(step_path(1)) : std::nullopt);
  }
}

// --- a saver killed at random moments -----------------------------------------------------------------

TEST_F(CheckpointDir, SaverKilledAtAnyMomentLeavesLatestNamingACompleteCheckpoint) {
  // A child process saves steps (each twice, so the same-step swap is exercised too, with
  // keep_last pruning) until the parent SIGKILLs it after a random delay. After every kill,
  // `latest` must name a directory that loads, whose contents are those of the step it names,
  // and that is no older than what the previous round verified.
  // Kill delays scale with what one save takes here and now (fsync times vary a lot with the
  // machine and its load): up to four saves' worth, so some kills come after completed saves.
  int64_t save_us = 0;
  for (int i = 0; i < 3; ++i) {
    auto start = std::chrono::steady_clock::now();
    save_checkpoint((dir_ / "timing").string(), make_checkpoint(1, 50'000));
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start);
    save_us = std::max<int64_t>(save_us, us.count());
  }
  fs::remove_all(dir_ / "timing");
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int64_t> delay_us(0, 4 * save_us + 1000);
  int64_t verified = 0;
  int kills_mid_save = 0;
  for (int round = 0; round < 25; ++round) {
    SCOPED_TRACE(round);
    const int64_t first = verified + 1;
    pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      try {
        for (int64_t i = 0;; ++i) {
          int64_t step = first + i / 2;
          save_checkpoint(dir(), make_checkpoint(step, 50'000), {.keep_last = 2});
        }
      } catch (...) {
        ::_exit(3);  // a failed save must not pass for a kill
      }
    }
    std::this_thread::sleep_for(std::chrono::microseconds(delay_us(rng)));
    ::kill(child, SIGKILL);
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFSIGNALED(status)) << "the saver exited by itself (status " << status << ")";
    if (!entries_with_prefix(dir_, ".tmp-").empty()) ++kills_mid_save;

    if (!fs::exists(dir_ / "latest")) {
      ASSERT_EQ(verified, 0) << "latest disappeared";
      continue;
    }
    std::string name = read_raw((dir_ / "latest").string());
    ASSERT_FALSE(name.empty());
    name.pop_back();                                         // "\n"
    Checkpoint c = load_checkpoint((dir_ / name).string());  // throws if damaged
    EXPECT_EQ(checkpoint_dir_name(c.step), name);
    EXPECT_GE(c.step, verified);
    EXPECT_EQ(first_weight(c), static_cast<float>(c.step));
    EXPECT_EQ(c.tensors.at("model").at(0).second.to_vector<float>().back(), c.step + 0.25f * 49'999);
    EXPECT_EQ(c.texts.at("trainer.json"), str_cat("{\"step\": ", c.step, "}"));
    EXPECT_EQ(latest_checkpoint(dir()), (dir_ / name).string());
    verified = c.step;
  }
  EXPECT_GT(verified, 0) << "no save ever completed (one took " << save_us << " us when timed)";
  // Most kills land mid-save (the child does nothing else), so leftovers were seen and cleaned.
  EXPECT_GT(kills_mid_save, 0);
  save_checkpoint(dir(), make_checkpoint(verified + 1));
  EXPECT_TRUE(entries_with_prefix(dir_, ".tmp-").empty());
}

}  // namespace
}  // namespace bvllm::parallel
