#include "data/manifest.h"

#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string_view>

#include "data/chat_template.h"
#include "runtime/error.h"

namespace bvllm::data {
namespace {

using nlohmann::json;

// Where a record sits, for error messages: "<file>: line 12 (record 3)".
struct Where {
  const std::string& what;
  int64_t line;
  int64_t index;
};

template <typename... Args>
[[noreturn]] void fail(const Where& at, const Args&... args) {
  throw Error(str_cat(at.what, ": line ", at.line, " (record ", at.index, "): ", args...));
}

// nlohmann's parse errors say "... at line 1, column 5: <detail>" relative to the text it was
// given (one record); keep the detail, the caller supplies the line in the file.
std::string json_error_detail(const std::string& message) {
  const size_t column = message.find("column ");
  if (column != std::string::npos) {
    const size_t colon = message.find(": ", column);
    if (colon != std::string::npos) return message.substr(colon + 2);
  }
  return message;
}

std::string_view tag_of(Sample::Kind kind) { return kind == Sample::VIDEO ? "<video>" : "<image>"; }

std::string quoted(const json& value) { return value.dump(-1, ' ', false, json::error_handler_t::replace); }

ManifestEntry entry_from_json(const json& record, const Where& at) {
  if (!record.is_object()) fail(at, "expected a JSON object, got ", record.type_name());
  ManifestEntry entry;
  entry.line = at.line;
  entry.index = at.index;

  if (auto it = record.find("id"); it == record.end()) {
    entry.id = std::to_string(at.index);
  } else if (it->is_string()) {
    entry.id = it->get<std::string>();
    if (entry.id.empty()) fail(at, "\"id\" is empty");
  } else if (it->is_number_integer()) {
    entry.id = it->dump();
  } else {
    fail(at, "\"id\": expected a string or an integer, got ", it->type_name(), " ", quoted(*it));
  }

  const auto video = record.find("video");
  const auto image = record.find("image");
  if (video != record.end() && image != record.end())
    fail(at, "has both \"video\" and \"image\" (a record holds one medium, or none for text)");
  if (video != record.end() || image != record.end()) {
    const bool is_video = video != record.end();
    const json& media = is_video ? *video : *image;
    const char* key = is_video ? "\"video\"" : "\"image\"";
    if (!media.is_string()) fail(at, key, ": expected a path (string), got ", media.type_name(), " ", quoted(media));
    entry.media = media.get<std::string>();
    if (entry.media.empty()) fail(at, key, " is empty");
    entry.kind = is_video ? Sample::VIDEO : Sample::IMAGE;
  }

  const auto conversations = record.find("conversations");
  if (conversations == record.end()) fail(at, "no \"conversations\"");
  if (!conversations->is_array() || conversations->empty())
    fail(at, "\"conversations\": expected a non-empty array of {\"from\", \"value\"}, got ", quoted(*conversations));
  for (size_t t = 0; t < conversations->size(); ++t) {
    const json& turn = (*conversations)[t];
    if (!turn.is_object()) fail(at, "\"conversations\"[", t, "]: expected an object, got ", turn.type_name());
    const auto from = turn.find("from");
    const auto value = turn.find("value");
    if (from == turn.end() || !from->is_string() || (*from != "human" && *from != "gpt"))
      fail(at, "\"conversations\"[", t, "].\"from\": expected \"human\" or \"gpt\", got ",
           from == turn.end() ? std::string("nothing") : quoted(*from));
    if (value == turn.end() || !value->is_string())
      fail(at, "\"conversations\"[", t, "].\"value\": expected a string, got ",
           value == turn.end() ? std::string("nothing") : quoted(*value));
    Turn& out = entry.turns.emplace_back();
    out.set_from(from->get<std::string>());
    out.set_value(value->get<std::string>());
  }

  auto count_with = [&](std::string_view tag) {
    int64_t n = 0;
    for (const Turn& turn : entry.turns) n += turn.value().find(tag) != std::string::npos;
    return n;
  };
  if (entry.kind == Sample::TEXT) {
    if (count_with("<video>") > 0 || count_with("<image>") > 0)
      fail(at, "a text record (no \"video\" or \"image\") has a <video> or <image> tag in \"conversations\"");
    return entry;
  }
  if (entry.kind == Sample::VIDEO && count_with("<video>") == 0 && count_with("<image>") > 0) {
    // LLaMA-VID's video records use <image> (data-pipeline.md §4.1).
    for (Turn& turn : entry.turns) {
      std::string value = turn.value();
      for (size_t pos; (pos = value.find("<image>")) != std::string::npos;) value.replace(pos, 7, "<video>");
      turn.set_value(value);
    }
  }
  const std::string_view tag = tag_of(entry.kind);
  if (count_with(tag) == 0)
    fail(at, entry.kind == Sample::VIDEO ? "a video" : "an image", " record needs ", tag,
         " in one of its \"conversations\" turns");
  for (Turn& turn : entry.turns) turn.set_value(media_to_front(turn.value(), tag));
  return entry;
}

// 1-based line of byte `pos`, counting newlines incrementally (positions only grow).
class LineCounter {
 public:
  explicit LineCounter(std::string_view text) : text_(text) {}
  int64_t at(size_t pos) {
    for (; scanned_ < pos && scanned_ < text_.size(); ++scanned_) line_ += text_[scanned_] == '\n';
    return line_;
  }

 private:
  std::string_view text_;
  size_t scanned_ = 0;
  int64_t line_ = 1;
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

size_t skip_space(std::string_view text, size_t pos) {
  while (pos < text.size() && is_space(text[pos])) ++pos;
  return pos;
}

// The end of the JSON value starting at `pos` (one past it), found by bracket depth outside
// strings; the value itself is validated by the parser afterwards. npos when it never closes.
size_t value_end(std::string_view text, size_t pos) {
  const char first = text[pos];
  if (first != '{' && first != '[' && first != '"') {
    while (pos < text.size() && !is_space(text[pos]) && text[pos] != ',' && text[pos] != ']') ++pos;
    return pos;
  }
  int depth = 0;
  bool in_string = false;
  for (size_t i = pos; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
        if (depth == 0) return i + 1;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      ++depth;
    } else if (c == '}' || c == ']') {
      if (--depth == 0) return i + 1;
    }
  }
  return std::string_view::npos;
}

json parse_record(std::string_view text, const Where& at) {
  try {
    return json::parse(text.begin(), text.end());
  } catch (const json::parse_error& e) {
    fail(at, "invalid JSON: ", json_error_detail(e.what()));
  }
}

// A JSON array, parsed one record at a time: each record's line is known for errors, and a
// large manifest never exists as one JSON tree.
std::vector<ManifestEntry> parse_array(std::string_view text, size_t pos, const std::string& what) {
  LineCounter lines(text);
  std::vector<ManifestEntry> entries;
  pos = skip_space(text, pos + 1);  // past '['
  if (pos < text.size() && text[pos] == ']') {
    pos = skip_space(text, pos + 1);
  } else {
    for (;;) {
      const Where at{what, lines.at(pos), static_cast<int64_t>(entries.size())};
      if (pos >= text.size()) fail(at, "the JSON array is not closed (expected a record or ']')");
      const size_t end = value_end(text, pos);
      if (end == std::string_view::npos) fail(at, "the record never ends (unbalanced brackets or quotes)");
      entries.push_back(entry_from_json(parse_record(text.substr(pos, end - pos), at), at));
      pos = skip_space(text, end);
      if (pos < text.size() && text[pos] == ',') {
        pos = skip_space(text, pos + 1);
        continue;
      }
      if (pos < text.size() && text[pos] == ']') {
        pos = skip_space(text, pos + 1);
        break;
      }
      if (pos >= text.size())
        throw Error(str_cat(what, ": line ", lines.at(pos), ": the JSON array is not closed after record ",
                            entries.size() - 1));
      throw Error(str_cat(what, ": line ", lines.at(pos), ": expected ',' or ']' after record ", entries.size() - 1,
                          ", got '", text[pos], "'"));
    }
  }
  if (pos != text.size())
    throw Error(str_cat(what, ": line ", lines.at(pos), ": unexpected text after the JSON array"));
  return entries;
}

std::vector<ManifestEntry> parse_jsonl(std::string_view text, const std::string& what) {
  std::vector<ManifestEntry> entries;
  int64_t line = 0;
  for (size_t start = 0; start < text.size();) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    ++line;
    const std::string_view record = text.substr(start, end - start);
    start = end + 1;
    if (skip_space(record, 0) == record.size()) continue;
    const Where at{what, line, static_cast<int64_t>(entries.size())};
    entries.push_back(entry_from_json(parse_record(record, at), at));
  }
  return entries;
}

}  // namespace

std::vector<ManifestEntry> parse_manifest(const std::string& text, const std::string& what) {
  std::string_view view(text);
  if (view.starts_with("\xEF\xBB\xBF")) view.remove_prefix(3);  // a UTF-8 byte order mark
  const size_t pos = skip_space(view, 0);
  if (pos == view.size()) return {};
  if (view[pos] == '[') return parse_array(view, pos, what);
  if (view[pos] == '{') return parse_jsonl(view, what);
  throw Error(str_cat(what, ": expected a JSON array of records ('[') or JSONL (one '{' record per line), got '",
                      view[pos], "'"));
}

std::vector<ManifestEntry> read_manifest(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  BVLLM_REQUIRE(in, path, ": cannot open the manifest");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  BVLLM_REQUIRE(!in.bad(), path, ": cannot read the manifest");
  return parse_manifest(text, path);
}

}  // namespace bvllm::data
