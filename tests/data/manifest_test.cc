// Manifests: JSON arrays and JSONL of LLaVA / VideoLLaMA2 records, the tag moved to the front of
// its turn, ids, line numbers, and errors that name the file, the line, the record and the field.
#include "data/manifest.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "tests/support/messages.h"

namespace bvllm::data {
namespace {

using testing::error_of;

std::vector<std::pair<std::string, std::string>> turns_of(const ManifestEntry& entry) {
  std::vector<std::pair<std::string, std::string>> turns;
  for (const Turn& turn : entry.turns) turns.emplace_back(turn.from(), turn.value());
  return turns;
}

using Turns = std::vector<std::pair<std::string, std::string>>;

// The README example of VideoLLaMA2 (data-pipeline.md §4.1), pretty-printed over several lines,
// with a text record and a question whose tag comes last.
constexpr const char* kArray = R"([
  {"id": 1, "video": "videos/xxx.mp4",
   "conversations": [{"from": "human", "value": "<video>\nWhat are the main activities that take place in the video?"},
                     {"from": "gpt",   "value": "The main activities ... sailing a boat through the water."}]},
  {"id": 0, "image": "images/xxx.jpg",
   "conversations": [{"from": "human", "value": "What are the colors of the bus in the image?\n<image>"},
                     {"from": "gpt",   "value": "The bus in the image is white and red."}]},

  {"id": "text-7",
   "conversations": [{"from": "human", "value": "Brackets ] } [ { and a quote \" in a string"},
                     {"from": "gpt", "value": "fine"}]}
]
)";

TEST(Manifest, ReadsAJsonArray) {
  const std::vector<ManifestEntry> entries = parse_manifest(kArray, "m.json");
  ASSERT_EQ(entries.size(), 3u);

  EXPECT_EQ(entries[0].id, "1");
  EXPECT_EQ(entries[0].kind, Sample::VIDEO);
  EXPECT_EQ(entries[0].media, "videos/xxx.mp4");
  EXPECT_EQ(entries[0].line, 2);
  EXPECT_EQ(entries[0].index, 0);
  EXPECT_EQ(turns_of(entries[0]),
            (Turns{{"human", "<video>\nWhat are the main activities that take place in the video?"},
                   {"gpt", "The main activities ... sailing a boat through the water."}}));

  EXPECT_EQ(entries[1].id, "0");
  EXPECT_EQ(entries[1].kind, Sample::IMAGE);
  EXPECT_EQ(entries[1].media, "images/xxx.jpg");
  EXPECT_EQ(entries[1].line, 5);
  EXPECT_EQ(entries[1].index, 1);
  // The tag moved to the front, as preprocess_multimodal does.
  EXPECT_EQ(turns_of(entries[1]), (Turns{{"human", "<image>\nWhat are the colors of the bus in the image?"},
                                         {"gpt", "The bus in the image is white and red."}}));

  EXPECT_EQ(entries[2].id, "text-7");
  EXPECT_EQ(entries[2].kind, Sample::TEXT);
  EXPECT_EQ(entries[2].media, "");
  EXPECT_EQ(entries[2].line, 9);
  EXPECT_EQ(turns_of(entries[2])[0].second, "Brackets ] } [ { and a quote \" in a string");
}

TEST(Manifest, ReadsJsonlWithBlankLinesAndMissingIds) {
  const std::string text =
      "\xEF\xBB\xBF"  // a byte order mark
      R"({"video": "a.mp4", "conversations": [{"from": "human", "value": "  Describe it. <video> "}, {"from": "gpt", "value": "A dog."}]})"
      "\n\n  \r\n"
      R"({"id": "x", "conversations": [{"from": "human", "value": "hi"}]})"
      "\r\n"
      R"({"image": "b.png", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "Red."}]})";
  const std::vector<ManifestEntry> entries = parse_manifest(text, "m.jsonl");
  ASSERT_EQ(entries.size(), 3u);
  EXPECT_EQ(entries[0].id, "0");  // no "id": the record's index
  EXPECT_EQ(entries[0].line, 1);
  EXPECT_EQ(turns_of(entries[0])[0].second, "<video>\nDescribe it.");
  EXPECT_EQ(entries[1].id, "x");
  EXPECT_EQ(entries[1].line, 4);
  EXPECT_EQ(entries[1].index, 1);
  EXPECT_EQ(entries[2].id, "2");
  EXPECT_EQ(entries[2].line, 5);
  EXPECT_EQ(turns_of(entries[2])[0].second, "<image>");  // a bare tag stays as it is
}

TEST(Manifest, LlamaVidVideoRecordsWithImageTagsBecomeVideoTags) {
  // LLaMA-VID's WebVid records: "<instruction>\n<image>" on a "video" record (data-pipeline.md §4.1).
  const auto entries = parse_manifest(
      R"([{"id": "1066674784", "video": "000001_000050/1066674784.mp4", "conversations": [{"from": "human", "value": "Describe the video briefly.\n<image>"}, {"from": "gpt", "value": "A beach."}]}])",
      "webvid.json");
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(turns_of(entries[0])[0].second, "<video>\nDescribe the video briefly.");
}

TEST(Manifest, EveryTurnWithTheTagIsRewrittenAndOthersKept) {
  const auto entries = parse_manifest(
      R"({"id": 5, "video": "v.mp4", "conversations": [{"from": "human", "value": "Q1 <video>"}, {"from": "gpt", "value": "A1"}, {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]})",
      "m.jsonl");
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(turns_of(entries[0]), (Turns{{"human", "<video>\nQ1"}, {"gpt", "A1"}, {"human", "Q2"}, {"gpt", "A2"}}));
}

TEST(Manifest, EmptyInputHasNoRecords) {
  EXPECT_TRUE(parse_manifest("", "m").empty());
  EXPECT_TRUE(parse_manifest(" \n[ ]\n", "m").empty());
}

TEST(Manifest, ReadsAFileAndNamesItInErrors) {
  const std::filesystem::path path =
      std::filesystem::temp_directory_path() / ("bvllm_manifest_test_" + std::to_string(::getpid()) + ".json");
  std::ofstream(path) << kArray;
  EXPECT_EQ(read_manifest(path.string()).size(), 3u);
  std::ofstream(path) << "[{\"id\": 1}]";
  EXPECT_EQ(error_of([&] { read_manifest(path.string()); }),
            path.string() + ": line 1 (record 0): no \"conversations\"");
  std::filesystem::remove(path);
  EXPECT_EQ(error_of([&] { read_manifest(path.string()); }), path.string() + ": cannot open the manifest");
}

std::string error_in(const std::string& text) {
  return error_of([&] { parse_manifest(text, "m.json"); });
}

constexpr const char* kTurns =
    R"("conversations": [{"from": "human", "value": "<video>\nq"}, {"from": "gpt", "value": "a"}])";

TEST(Manifest, ErrorsNameLineRecordAndField) {
  const std::string good = std::string(R"({"id": 1, "video": "v.mp4", )") + kTurns + "}";
  EXPECT_EQ(
      error_in("[" + good + ",\n\n" + R"({"id": 2, "video": "v.mp4", "image": "i.jpg", )" + kTurns + "}]"),
      "m.json: line 3 (record 1): has both \"video\" and \"image\" (a record holds one medium, or none for text)");
  EXPECT_EQ(error_in(R"({"id": 1.5, "video": "v.mp4", )" + std::string(kTurns) + "}"),
            "m.json: line 1 (record 0): \"id\": expected a string or an integer, got number 1.5");
  EXPECT_EQ(error_in(R"({"id": "", "video": "v.mp4", )" + std::string(kTurns) + "}"),
            "m.json: line 1 (record 0): \"id\" is empty");
  EXPECT_EQ(error_in(R"({"video": 3, )" + std::string(kTurns) + "}"),
            "m.json: line 1 (record 0): \"video\": expected a path (string), got number 3");
  EXPECT_EQ(error_in(R"({"image": "", )" + std::string(kTurns) + "}"), "m.json: line 1 (record 0): \"image\" is empty");
  EXPECT_EQ(
      error_in(good + "\n" + R"({"video": "v.mp4", "conversations": []})"),
      "m.json: line 2 (record 1): \"conversations\": expected a non-empty array of {\"from\", \"value\"}, got []");
  EXPECT_EQ(
      error_in(
          R"({"video": "v.mp4", "conversations": [{"from": "human", "value": "<video>"}, {"from": "bot", "value": "a"}]})"),
      "m.json: line 1 (record 0): \"conversations\"[1].\"from\": expected \"human\" or \"gpt\", got \"bot\"");
  EXPECT_EQ(error_in(R"({"video": "v.mp4", "conversations": [{"from": "human"}]})"),
            "m.json: line 1 (record 0): \"conversations\"[0].\"value\": expected a string, got nothing");
  EXPECT_EQ(error_in(R"({"video": "v.mp4", "conversations": [7]})"),
            "m.json: line 1 (record 0): \"conversations\"[0]: expected an object, got number");
  EXPECT_EQ(error_in(R"({"video": "v.mp4", "conversations": [{"from": "human", "value": "no tag"}]})"),
            "m.json: line 1 (record 0): a video record needs <video> in one of its \"conversations\" turns");
  EXPECT_EQ(error_in(R"({"image": "i.png", "conversations": [{"from": "human", "value": "<video> wrong tag"}]})"),
            "m.json: line 1 (record 0): an image record needs <image> in one of its \"conversations\" turns");
  EXPECT_EQ(error_in(R"({"conversations": [{"from": "human", "value": "<image> but no image"}]})"),
            "m.json: line 1 (record 0): a text record (no \"video\" or \"image\") has a <video> or <image> tag in "
            "\"conversations\"");
  EXPECT_EQ(error_in("[" + good + ", 3]"), "m.json: line 1 (record 1): expected a JSON object, got number");
}

TEST(Manifest, SyntaxErrorsNameTheLine) {
  const std::string good = std::string(R"({"id": 1, "video": "v.mp4", )") + kTurns + "}";
  // A broken record in the middle of an array.
  const std::string broken_array = error_in("[\n" + good + ",\n" + R"({"id": 2, "video": tru})" + "\n]");
  EXPECT_EQ(broken_array.rfind("m.json: line 3 (record 1): invalid JSON: syntax error", 0), 0u) << broken_array;
  const std::string broken_line = error_in(good + "\n" + good + "\n{\"id\": 3,\n");
  EXPECT_EQ(broken_line.rfind("m.json: line 3 (record 2): invalid JSON: syntax error", 0), 0u) << broken_line;
  EXPECT_EQ(error_in("[" + good + ",\n" + good), "m.json: line 2: the JSON array is not closed after record 1");
  EXPECT_EQ(error_in("[" + good + ",\n"),
            "m.json: line 2 (record 1): the JSON array is not closed (expected a record or ']')");
  EXPECT_EQ(error_in("[" + good + "\n" + good + "]"), "m.json: line 2: expected ',' or ']' after record 0, got '{'");
  EXPECT_EQ(error_in("[" + good + "]\n]"), "m.json: line 2: unexpected text after the JSON array");
  EXPECT_EQ(error_in("[{\"id\": \"never closed]"),
            "m.json: line 1 (record 0): the record never ends (unbalanced brackets or quotes)");
  EXPECT_EQ(error_in("id,video\n1,a.mp4"),
            "m.json: expected a JSON array of records ('[') or JSONL (one '{' record per line), got 'i'");
}

}  // namespace
}  // namespace bvllm::data
