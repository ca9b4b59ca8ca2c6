// A Canvas as an 8-bit RGB PNG file (libpng).
#pragma once

#include <string>

#include "tools/plot/canvas.h"

namespace bvllm::plot {

// Writes path + ".tmp" and renames it over `path`, so a reader never sees half a file. Throws
// bvllm::Error naming the file when it cannot be written.
void write_png(const std::string& path, const Canvas& canvas);

}  // namespace bvllm::plot
