// Dataset manifests: the LLaVA / VideoLLaMA2 training JSON that bvllm_prep turns into shards
// (../shared/research/data-pipeline.md §4.1).
//
// A manifest is either a JSON array of records or JSONL (one record per line, blank lines
// skipped); the first non-blank character decides ('[' array, '{' JSONL). A record is
//
//   {"id": "v1" | 17,                                      optional (see below)
//    "video": "videos/a.mp4"  |  "image": "images/b.jpg"   at most one of the two; neither = text
//    "conversations": [{"from": "human", "value": "<video>\nWhat happens?"},
//                      {"from": "gpt", "value": "A man rides a horse."}]}
//
// Other keys are ignored. Rules, each checked with an error naming the file, the record (line and
// 0-based index) and the field:
//   - "id" is a non-empty string or an integer (kept as its decimal text). A record without "id"
//     gets its 0-based index in the manifest as id ("0", "1", ...). Ids are not checked for
//     uniqueness here: bvllm_prep keeps the first record of an id and rejects later ones.
//   - "video" / "image" is a non-empty path, relative to the media root (an absolute path is used
//     as it is).
//   - "conversations" is a non-empty array of {"from": "human" | "gpt", "value": string}.
//   - A video record must carry "<video>" in at least one turn, an image record "<image>". A video
//     record that only says "<image>" (LLaMA-VID writes its video records so) has it read as
//     "<video>". In every turn that holds the tag, the tag is moved to the front of the turn as
//     "<video>\n" + rest (B-VLLM's preprocess_multimodal, data/chat_template.h media_to_front).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/sample.pb.h"

namespace bvllm::data {

struct ManifestEntry {
  std::string id;
  Sample::Kind kind = Sample::TEXT;
  std::string media;        // as written in the manifest; empty for text
  std::vector<Turn> turns;  // tags moved to the front
  int64_t line = 0;         // 1-based line where the record starts in the file
  int64_t index = 0;        // 0-based position in the manifest (what --part/--parts split on)
};

// Reads a whole manifest. Throws bvllm::Error naming the file, line, record and field for the
// first problem found.
std::vector<ManifestEntry> read_manifest(const std::string& path);

// The same from text; `what` names the source in errors (read_manifest passes the path).
std::vector<ManifestEntry> parse_manifest(const std::string& text, const std::string& what);

}  // namespace bvllm::data
