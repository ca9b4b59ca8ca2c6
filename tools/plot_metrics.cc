// plot_metrics: being written (issue 7); this placeholder only keeps the build whole.
#include <cstdio>

int main() {
  std::fputs("plot_metrics: not built yet\n", stderr);
  return 1;
}
