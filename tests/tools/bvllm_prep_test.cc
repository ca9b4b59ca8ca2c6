// bvllm_prep end to end on media that the test makes with the ffmpeg command line: good videos,
// images and text written once each; a corrupt video, a missing file, a broken JPEG, an audio-only
// file and a repeated id rejected with their reasons; a run killed midway (SIGKILL) and re-run
// ends with every sample exactly once; --part/--parts and the Slurm/MPI variables split the work;
// inspect lists the samples and dumps frames.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "data/jpeg.h"
#include "data/shard.h"
#include "data/video_decoder.h"

namespace bvllm::data {
namespace {

namespace fs = std::filesystem;

const std::string kPrep = std::string(BVLLM_BINARY_DIR) + "/bin/bvllm_prep";
// The runs must not pick up a partition from a Slurm or MPI job that runs the tests.
const std::string kCleanEnv =
    "env -u SLURM_ARRAY_TASK_ID -u SLURM_ARRAY_TASK_COUNT -u SLURM_ARRAY_TASK_MIN -u OMPI_COMM_WORLD_RANK "
    "-u OMPI_COMM_WORLD_SIZE -u PMI_RANK -u PMI_SIZE ";

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

bool killed(int status) {
  // std::system runs sh -c, which reports a killed child as exit status 128 + 9 (or is replaced by it).
  return (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) || (WIFEXITED(status) && WEXITSTATUS(status) == 137);
}

struct Expected {
  std::string id, kind, media;
  int frames = 0;             // at 1 fps
  int width = 0, height = 0;  // after resizing the short side to 64
  double fps = 0, duration = 0;
  std::string first_turn;  // tag moved to the front
};

class BvllmPrep : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    media_ = fs::temp_directory_path() / ("bvllm_prep_media_" + std::to_string(::getpid()));
    fs::remove_all(media_);
    fs::create_directories(media_);
    const std::string ff = "ffmpeg -nostdin -v error -y ";
    std::string to = " ";  // built by appending (GCC 12 misreports "literal" + std::string as -Wrestrict)
    to += media_.string();
    to += "/";
    const std::string commands[] = {
        ff + "-f lavfi -i testsrc2=size=320x240:rate=25:duration=3 -c:v libx264 -pix_fmt yuv420p" + to + "land.mp4",
        ff + "-f lavfi -i testsrc2=size=240x320:rate=30:duration=2 -c:v mpeg4" + to + "portrait.avi",
        ff + "-f lavfi -i testsrc2=size=200x150 -frames:v 1" + to + "land.jpg",
        ff + "-f lavfi -i testsrc2=size=150x200 -frames:v 1" + to + "portrait.png",
        ff + "-f lavfi -i sine=duration=1" + to + "audio.m4a",
    };
    for (const std::string& command : commands) {
      if (std::system((command + " 2>/dev/null").c_str()) != 0) {
        media_error_ = "cannot make test media with: " + command;
        return;
      }
    }
    // A broken JPEG: the first 300 bytes of a good one. A corrupt video: random bytes.
    std::ofstream(media_ / "broken.jpg", std::ios::binary) << read_file(media_ / "land.jpg").substr(0, 300);
    std::mt19937 rng(7);
    std::string noise(5000, '\0');
    for (char& c : noise) c = static_cast<char>(rng());
    std::ofstream(media_ / "corrupt.mp4", std::ios::binary) << noise;
  }
  static void TearDownTestSuite() { fs::remove_all(media_); }

  void SetUp() override {
    ASSERT_TRUE(fs::exists(kPrep)) << kPrep << " is not built";
    if (!media_error_.empty()) GTEST_SKIP() << media_error_ << " (is the ffmpeg command line installed?)";
    dir_ = fs::temp_directory_path() / ("bvllm_prep_test_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    out_ = dir_ / "out";
    WriteManifest();
  }
  void TearDown() override { fs::remove_all(dir_); }

  // 10 good samples (videos in both orientations, images, text) and 5 bad ones.
  void WriteManifest() {
    auto record = [](const std::string& id, const std::string& key, const std::string& media,
                     const std::string& question) {
      nlohmann::json r = {
          {"id", id},
          {"conversations", {{{"from", "human"}, {"value", question}}, {{"from", "gpt"}, {"value", "answer " + id}}}}};
      if (!key.empty()) r[key] = media;
      return r;
    };
    const Expected land{"", "video", "land.mp4", 3, 85, 64, 25, 3.0, ""};
    const Expected portrait{"", "video", "portrait.avi", 2, 64, 85, 30, 2.0, ""};
    nlohmann::json manifest = nlohmann::json::array();
    for (int i = 0; i < 6; ++i) {
      Expected e = i % 2 == 0 ? land : portrait;
      e.id = "vid" + std::to_string(i);
      e.first_turn = "<video>\nWhat happens in " + e.id + "?";
      manifest.push_back(record(e.id, "video", e.media, "What happens in " + e.id + "? <video>"));
      good_.push_back(e);
    }
    good_.push_back({"img0", "image", "land.jpg", 1, 85, 64, 0, 0, "<image>\nDescribe."});
    manifest.push_back(record("img0", "image", "land.jpg", "<image>\nDescribe."));
    good_.push_back({"img1", "image", "portrait.png", 1, 64, 85, 0, 0, "<image>\nDescribe."});
    manifest.push_back(record("img1", "image", "portrait.png", "Describe.\n<image>"));
    for (int i = 0; i < 2; ++i) {
      const std::string id = "txt" + std::to_string(i);
      good_.push_back({id, "text", "", 0, 0, 0, 0, 0, "Hello " + id});
      manifest.push_back(record(id, "", "", "Hello " + id));
    }
    manifest.push_back(record("bad_corrupt", "video", "corrupt.mp4", "<video>"));
    manifest.push_back(record("bad_missing", "video", "missing.mp4", "<video>"));
    manifest.push_back(record("bad_jpeg", "image", "broken.jpg", "<image>"));
    manifest.push_back(record("bad_audio", "video", "audio.m4a", "<video>"));
    manifest.push_back(record("vid1", "video", "land.mp4", "<video> the same id again"));
    bad_ = {{"bad_corrupt", "undecodable"},
            {"bad_missing", "missing file"},
            {"bad_jpeg", "undecodable"},
            {"bad_audio", "no video stream"},
            {"vid1", "duplicate id"}};
    // One record per line: record i is on line i + 2.
    std::ofstream out(dir_ / "manifest.json");
    out << "[\n";
    for (size_t i = 0; i < manifest.size(); ++i) out << manifest[i].dump() << (i + 1 < manifest.size() ? ",\n" : "\n");
    out << "]\n";
  }

  // Runs bvllm_prep with `args` (and the test's manifest, media and output unless `bare`);
  // returns the wait status, stdout and stderr together in `output`.
  int prep(const std::string& args, std::string* output, const std::string& env = "", bool bare = false) {
    const fs::path log = dir_ / "log.txt";
    std::string command = kCleanEnv + env + " " + kPrep + " ";
    if (!bare)
      command += "--manifest=" + (dir_ / "manifest.json").string() + " --media_root=" + media_.string() +
                 " --out=" + out_.string() + " --frame_size=64 --progress_seconds=1000 ";
    command += args + " > " + log.string() + " 2>&1";
    const int status = std::system(command.c_str());
    *output = read_file(log);
    return status;
  }

  std::multiset<std::string> ids_in(const fs::path& out) const {
    const std::vector<std::string> ids = ShardReader(out.string()).ids();
    return {ids.begin(), ids.end()};
  }
  std::multiset<std::string> good_ids() const {
    std::multiset<std::string> ids;
    for (const Expected& e : good_) ids.insert(e.id);
    return ids;
  }
  std::map<std::string, nlohmann::json> rejects(const std::string& name = "rejects.jsonl") const {
    std::map<std::string, nlohmann::json> by_id;
    std::ifstream in(out_ / name);
    for (std::string line; std::getline(in, line);) {
      nlohmann::json r = nlohmann::json::parse(line);
      EXPECT_EQ(by_id.count(r["id"]), 0u) << "rejected twice: " << line;
      by_id[r["id"]] = r;
    }
    return by_id;
  }

  static inline fs::path media_;
  static inline std::string media_error_;
  fs::path dir_, out_;
  std::vector<Expected> good_;
  std::map<std::string, std::string> bad_;  // id -> reason
};

TEST_F(BvllmPrep, WritesEveryGoodSampleOnceAndRejectsTheBadOnesWithReasons) {
  std::string output;
  ASSERT_EQ(prep("--workers=2", &output), 0) << output;
  EXPECT_NE(output.find("10 written"), std::string::npos) << output;
  EXPECT_NE(output.find("0 skipped"), std::string::npos) << output;
  EXPECT_NE(output.find("5 rejected"), std::string::npos) << output;
  EXPECT_NE(output.find("14/14 (100.0%)"), std::string::npos)
      << output;  // the progress line (the repeated id is not work)

  const ShardReader reader(out_.string());
  EXPECT_EQ(ids_in(out_), good_ids());
  std::map<std::string, Sample> by_id;
  for (int64_t i = 0; i < reader.size(); ++i) {
    Sample sample = reader.get(i);
    by_id[sample.id()] = std::move(sample);
  }
  const DecodeOptions options{.fps = 1, .threads = 1, .short_side = 64};
  for (const Expected& e : good_) {
    SCOPED_TRACE(e.id);
    const Sample& s = by_id.at(e.id);
    EXPECT_EQ(s.kind(), e.kind == "video" ? Sample::VIDEO : e.kind == "image" ? Sample::IMAGE : Sample::TEXT);
    EXPECT_EQ(s.source(), e.media);
    ASSERT_EQ(s.conversations_size(), 2);
    EXPECT_EQ(s.conversations(0).from(), "human");
    EXPECT_EQ(s.conversations(0).value(), e.first_turn);
    EXPECT_EQ(s.conversations(1).value(), "answer " + e.id);
    ASSERT_EQ(s.frames_size(), e.frames);
    ASSERT_EQ(s.timestamps_size(), e.frames);
    if (e.kind == "text") continue;
    EXPECT_EQ(s.width(), e.width);
    EXPECT_EQ(s.height(), e.height);
    EXPECT_NEAR(s.fps(), e.fps, 1e-9);
    EXPECT_NEAR(s.duration(), e.duration, 1e-6);
    EXPECT_EQ(s.sample_fps(), e.kind == "video" ? 1.0 : 0.0);
    // The stored frames are the decoder's frames, JPEG-encoded at quality 90: the encoder is
    // deterministic, so the bytes are those of encode_jpeg on the decoded frame.
    const std::string path = (media_ / e.media).string();
    const DecodedVideo decoded = e.kind == "video" ? decode_video(path, options) : decode_image(path, options);
    ASSERT_EQ(decoded.frames.size(), static_cast<size_t>(e.frames));
    for (int f = 0; f < e.frames; ++f) {
      EXPECT_EQ(s.timestamps(f), decoded.frames[f].timestamp);
      EXPECT_TRUE(s.frames(f) == encode_jpeg(decoded.frames[f].rgb, 90)) << "frame " << f;
      EXPECT_EQ(decode_jpeg(s.frames(f), e.id).shape(), (Shape{e.height, e.width, 3}));
    }
    if (e.kind == "video") {
      EXPECT_LT(s.timestamps(0), 1.0);
      for (int f = 1; f < e.frames; ++f) EXPECT_NEAR(s.timestamps(f) - s.timestamps(f - 1), 1.0, 0.05);
    }
  }

  const auto rejected = rejects();
  ASSERT_EQ(rejected.size(), bad_.size());
  for (const auto& [id, reason] : bad_) {
    SCOPED_TRACE(id);
    ASSERT_EQ(rejected.count(id), 1u);
    const nlohmann::json& r = rejected.at(id);
    EXPECT_EQ(r["reason"], reason);
    EXPECT_FALSE(r["detail"].get<std::string>().empty());
  }
  EXPECT_EQ(rejected.at("bad_missing")["source"], "missing.mp4");
  EXPECT_EQ(rejected.at("bad_missing")["line"], 13);
  EXPECT_NE(rejected.at("bad_missing")["detail"].get<std::string>().find((media_ / "missing.mp4").string()),
            std::string::npos);
  EXPECT_EQ(rejected.at("vid1")["line"], 16);
  EXPECT_EQ(rejected.at("vid1")["detail"], "record 14 (line 16) repeats the id of record 1 (line 3), which is kept");

  // A second run has nothing left to write, retries the rejects, and adds no copy.
  ASSERT_EQ(prep("--workers=2", &output), 0) << output;
  EXPECT_NE(output.find("0 written"), std::string::npos) << output;
  EXPECT_NE(output.find("10 skipped"), std::string::npos) << output;
  EXPECT_NE(output.find("5 rejected"), std::string::npos) << output;
  EXPECT_EQ(ids_in(out_), good_ids());
  EXPECT_EQ(rejects().size(), bad_.size());
}

TEST_F(BvllmPrep, AKilledRunResumesToEverySampleExactlyOnce) {
  // Small shards (a few samples each) and batches of 2: when the kill comes, some shards are
  // finished and listed, and the current one holds committed batches but is not listed.
  const std::string args = "--workers=1 --batch=2 --max_shard_bytes=40000";
  std::string output;
  ASSERT_TRUE(killed(prep(args + " --debug_stop_after=7", &output))) << output;
  ASSERT_TRUE(has_index(out_.string())) << output;
  const int64_t listed = read_index(out_.string()).samples();
  EXPECT_GT(listed, 0);
  EXPECT_LT(listed, 7);
  EXPECT_EQ(ids_in(out_).size(), static_cast<size_t>(listed));

  // Killed again: the second run adopts what the first committed, and gets killed too.
  ASSERT_TRUE(killed(prep(args + " --debug_stop_after=2", &output))) << output;
  EXPECT_NE(output.find("kept from an unfinished run"), std::string::npos) << output;
  const std::multiset<std::string> partial = ids_in(out_);
  EXPECT_GT(partial.size(), static_cast<size_t>(listed));
  EXPECT_EQ(std::set<std::string>(partial.begin(), partial.end()).size(), partial.size()) << "no id twice";

  // Resumed with the default settings: every good sample exactly once.
  ASSERT_EQ(prep("", &output), 0) << output;
  EXPECT_EQ(ids_in(out_), good_ids());
  EXPECT_EQ(rejects().size(), bad_.size());
}

TEST_F(BvllmPrep, PartsSplitTheManifestAndShareTheOutput) {
  std::string output;
  // Both parts at once, into one directory.
  const std::string common = kCleanEnv + kPrep + " --manifest=" + (dir_ / "manifest.json").string() +
                             " --media_root=" + media_.string() + " --out=" + out_.string() +
                             " --frame_size=64 --workers=1 --batch=1 --max_shard_bytes=20000";
  const std::string both = "(" + common + " --part=0 --parts=2 > " + (dir_ / "p0.txt").string() + " 2>&1 & " + common +
                           " --part=1 --parts=2 > " + (dir_ / "p1.txt").string() + " 2>&1; wait)";
  ASSERT_EQ(std::system(both.c_str()), 0);
  EXPECT_NE(read_file(dir_ / "p0.txt").find("part 0 of 2 (from --part/--parts)"), std::string::npos)
      << read_file(dir_ / "p0.txt");
  EXPECT_EQ(ids_in(out_), good_ids()) << read_file(dir_ / "p0.txt") << read_file(dir_ / "p1.txt");
  for (const ShardInfo& info : read_index(out_.string()).shards)
    EXPECT_TRUE(info.file.starts_with("shard-p0of2-") || info.file.starts_with("shard-p1of2-")) << info.file;
  // Record i goes to part i % 2: the rejects (records 10-14) split 3 / 2.
  EXPECT_EQ(rejects("rejects-p0of2.jsonl").size(), 3u);
  EXPECT_EQ(rejects("rejects-p1of2.jsonl").size(), 2u);
  // A single-process run over the result has nothing to do.
  ASSERT_EQ(prep("", &output), 0) << output;
  EXPECT_NE(output.find("10 skipped"), std::string::npos) << output;
  EXPECT_EQ(ids_in(out_), good_ids());
}

TEST_F(BvllmPrep, SlurmArrayAndMpiVariablesChooseThePart) {
  std::string output;
  // Array --array=2-3: task 3 is part 1 of 2, the odd records.
  ASSERT_EQ(prep("", &output, "SLURM_ARRAY_TASK_ID=3 SLURM_ARRAY_TASK_MIN=2 SLURM_ARRAY_TASK_COUNT=2"), 0) << output;
  EXPECT_NE(output.find("part 1 of 2 (from the Slurm array (SLURM_ARRAY_TASK_ID))"), std::string::npos) << output;
  std::multiset<std::string> odd;
  for (size_t i = 1; i < good_.size(); i += 2) odd.insert(good_[i].id);
  EXPECT_EQ(ids_in(out_), odd);
  for (const ShardInfo& info : read_index(out_.string()).shards) EXPECT_TRUE(info.file.starts_with("shard-p1of2-"));
  // Open MPI's rank 0 of 2 does the rest.
  ASSERT_EQ(prep("", &output, "OMPI_COMM_WORLD_RANK=0 OMPI_COMM_WORLD_SIZE=2"), 0) << output;
  EXPECT_NE(output.find("part 0 of 2 (from the MPI launch (OMPI_COMM_WORLD_RANK))"), std::string::npos) << output;
  EXPECT_EQ(ids_in(out_), good_ids());
  EXPECT_NE(prep("", &output, "SLURM_ARRAY_TASK_ID=5 SLURM_ARRAY_TASK_COUNT=2"), 0);
  EXPECT_NE(output.find("does not map to a part in [0, 2)"), std::string::npos) << output;
}

TEST_F(BvllmPrep, AnUnfinishedRunOfOtherPartsIsNotMixedWithANewPartition) {
  std::string output;
  ASSERT_TRUE(killed(prep("--part=0 --parts=2 --workers=1 --batch=1 --debug_stop_after=2", &output))) << output;
  EXPECT_NE(prep("", &output), 0);
  EXPECT_NE(output.find((out_ / "shard-p0of2-00000").string() +
                        " is an unfinished shard of a run with --parts=2; finish that run"),
            std::string::npos)
      << output;
  ASSERT_EQ(prep("--part=0 --parts=2", &output), 0) << output;
  ASSERT_EQ(prep("--part=1 --parts=2", &output), 0) << output;
  ASSERT_EQ(prep("", &output), 0) << output;
  EXPECT_EQ(ids_in(out_), good_ids());
}

TEST_F(BvllmPrep, InspectListsSamplesAndDumpsFrames) {
  std::string output;
  ASSERT_EQ(prep("", &output), 0) << output;
  ASSERT_EQ(prep("inspect " + out_.string(), &output, "", /*bare=*/true), 0) << output;
  EXPECT_NE(output.find(out_.string() + ": 10 samples in 1 shard, "), std::string::npos) << output;
  std::map<std::string, std::vector<std::string>> rows;  // id -> columns
  std::istringstream lines(output);
  for (std::string line; std::getline(lines, line);) {
    std::vector<std::string> columns;
    std::istringstream fields(line);
    for (std::string field; std::getline(fields, field, '\t');) columns.push_back(field);
    if (columns.size() == 8) rows[columns[1]] = columns;
  }
  for (const Expected& e : good_) {
    ASSERT_EQ(rows.count(e.id), 1u) << e.id << "\n" << output;
    const std::vector<std::string>& row = rows[e.id];
    EXPECT_EQ(row[2], e.kind);
    EXPECT_EQ(row[3], std::to_string(e.frames));
    if (e.kind != "text") {
      EXPECT_EQ(row[4], std::to_string(e.width) + "x" + std::to_string(e.height));
    }
    std::string first = e.first_turn;
    if (size_t nl = first.find('\n'); nl != std::string::npos) first.replace(nl, 1, "\\n");
    EXPECT_EQ(row[7], "human: " + first);
  }

  const fs::path dump = dir_ / "dump";
  ASSERT_EQ(prep("inspect " + out_.string() + " --dump_frames=vid0 --dump_dir=" + dump.string(), &output, "", true), 0)
      << output;
  const ShardReader reader(out_.string());
  const std::vector<std::string> ids = reader.ids();
  const Sample vid0 = reader.get(std::find(ids.begin(), ids.end(), "vid0") - ids.begin());
  ASSERT_EQ(vid0.frames_size(), 3);
  for (int f = 0; f < 3; ++f) {
    char name[16];
    std::snprintf(name, sizeof(name), "%05d.jpg", f);
    EXPECT_EQ(read_file(dump / name), vid0.frames(f)) << name;
  }
  EXPECT_FALSE(fs::exists(dump / "00003.jpg"));
  EXPECT_NE(prep("inspect " + out_.string() + " --dump_frames=nope --dump_dir=" + dump.string(), &output, "", true), 0);
  EXPECT_EQ(output, "bvllm_prep: " + out_.string() + ": no sample with id \"nope\"\n");
}

TEST_F(BvllmPrep, FatalErrorsAreOneLineAndHelpExplainsResume) {
  std::string output;
  EXPECT_NE(prep("--manifest=x.json", &output, "", true), 0);
  EXPECT_EQ(output, "bvllm_prep: --out is required (the shard directory)\n");
  std::ofstream(dir_ / "bad.json") << "[{\"id\": 1, \"video\": \"a.mp4\"}]";
  EXPECT_NE(prep("--manifest=" + (dir_ / "bad.json").string() + " --out=" + out_.string(), &output, "", true), 0);
  EXPECT_EQ(output, "bvllm_prep: " + (dir_ / "bad.json").string() + ": line 1 (record 0): no \"conversations\"\n");
  EXPECT_NE(prep("--manifest=" + (dir_ / "manifest.json").string() + " --out=" + out_.string(), &output, "", true), 0);
  EXPECT_EQ(output, "bvllm_prep: --media_root is required: " + (dir_ / "manifest.json").string() +
                        " has video/image records with relative paths\n");
  EXPECT_NE(prep("inspect " + (dir_ / "nowhere").string(), &output, "", true), 0);
  EXPECT_NE(output.find("index.json: cannot open"), std::string::npos) << output;
  ASSERT_EQ(prep("--help", &output, "", true), 0);
  EXPECT_NE(output.find("Resume: run the same command again."), std::string::npos) << output;
  EXPECT_NE(output.find("--max_shard_bytes=1073741824"), std::string::npos) << output;
  EXPECT_EQ(output.find("--logtostderr"), std::string::npos) << "only bvllm_prep's flags";
}

}  // namespace
}  // namespace bvllm::data
