#include "tools/plot/png_writer.h"

#include <png.h>

#include <cerrno>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <system_error>

#include "runtime/error.h"

namespace bvllm::plot {
namespace {

struct PngError {
  char message[256] = "unknown libpng error";
};

void on_png_error(png_structp png, png_const_charp message) {
  auto* error = static_cast<PngError*>(png_get_error_ptr(png));
  std::snprintf(error->message, sizeof(error->message), "%s", message);
  png_longjmp(png, 1);
}

void on_png_warning(png_structp, png_const_charp) {}

// libpng reports errors by longjmp: this function keeps only trivially destructible locals so that
// jumping back into it skips no destructor.
bool write_rows(FILE* file, int width, int height, const uint8_t* rgb, PngError* error) {
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, error, on_png_error, on_png_warning);
  if (png == nullptr) return false;
  png_infop info = png_create_info_struct(png);
  if (info == nullptr) {
    png_destroy_write_struct(&png, nullptr);
    return false;
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    return false;
  }
  png_init_io(png, file);
  png_set_IHDR(png, info, static_cast<png_uint_32>(width), static_cast<png_uint_32>(height), 8, PNG_COLOR_TYPE_RGB,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int y = 0; y < height; ++y) png_write_row(png, rgb + static_cast<size_t>(y) * width * 3);
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return true;
}

}  // namespace

void write_png(const std::string& path, const Canvas& canvas) {
  const std::string tmp = path + ".tmp";
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(tmp.c_str(), "wb"), &std::fclose);
  BVLLM_REQUIRE(file != nullptr, path, ": cannot write (", std::strerror(errno), ")");
  PngError error;
  const bool written = write_rows(file.get(), canvas.width(), canvas.height(), canvas.pixels().data(), &error);
  const bool closed = std::fclose(file.release()) == 0;
  std::error_code ignored;
  if (!written || !closed) std::filesystem::remove(tmp, ignored);
  BVLLM_REQUIRE(written, path, ": cannot write the PNG (", error.message, ")");
  BVLLM_REQUIRE(closed, path, ": cannot write (", std::strerror(errno), ")");
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) std::filesystem::remove(tmp, ignored);
  BVLLM_REQUIRE(!ec, path, ": cannot rename ", tmp, " to it (", ec.message(), ")");
}

}  // namespace bvllm::plot
