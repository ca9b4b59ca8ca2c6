// Tensor metadata, views sharing storage, contiguous(), casts, printing and error messages.
#include "runtime/tensor.h"

#include <gtest/gtest.h>

#include <cmath>

#include "runtime/cuda/backend.h"
#include "runtime/ops.h"

namespace bvllm {
namespace {

Tensor iota(const Shape& shape) {
  std::vector<float> v(numel(shape));
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i);
  return Tensor::from(std::span<const float>(v), shape);
}

TEST(Tensor, EmptyHasContiguousStrides) {
  Tensor t = Tensor::empty({2, 3, 4});
  EXPECT_EQ(t.strides(), (Shape{12, 4, 1}));
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.nbytes(), 96u);
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.size(-1), 4);
}

TEST(Tensor, EmptyTensorsAreContiguous) {
  EXPECT_TRUE(Tensor::empty({4, 0}).is_contiguous());
  EXPECT_TRUE(Tensor::empty({0, 3}).transpose(0, 1).is_contiguous());
  EXPECT_EQ(Tensor::empty({4, 0}).contiguous().numel(), 0);
}

TEST(Tensor, EveryDtypeRoundTripsThroughCast) {
  Tensor src = Tensor::from<float>({-2.0f, 0.0f, 1.0f, 3.0f});
  for (DType d : {DType::F32, DType::F64, DType::BF16, DType::F16, DType::I32, DType::I64}) {
    EXPECT_EQ(src.to(d).to(DType::F32).to_vector<float>(), src.to_vector<float>()) << dtype_name(d);
  }
  EXPECT_EQ(src.to(DType::Bool).to_vector<float>(), (std::vector<float>{1, 0, 1, 1}));
  EXPECT_EQ(Tensor::from<float>({3.7f}).to(DType::U8).item<int>(), 3);
}

TEST(Tensor, Bf16RoundsToNearestEven) {
  // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
  EXPECT_EQ(to_bf16(1.00390625f).bits, 0x3F80);
  EXPECT_EQ(to_bf16(1.01171875f).bits, 0x3F82);
  EXPECT_EQ(to_bf16(std::nanf("")).bits, 0x7FC0);
}

TEST(Tensor, TransposeIsAViewAndContiguousCopies) {
  Tensor t = iota({2, 3});
  Tensor tt = t.transpose(0, 1);
  EXPECT_TRUE(tt.shares_storage(t));
  EXPECT_FALSE(tt.is_contiguous());
  EXPECT_EQ(tt.shape(), (Shape{3, 2}));
  Tensor c = tt.contiguous();
  EXPECT_FALSE(c.shares_storage(t));
  EXPECT_EQ(c.to_vector<float>(), (std::vector<float>{0, 3, 1, 4, 2, 5}));
}

TEST(Tensor, SliceNarrowSelectShareStorage) {
  Tensor t = iota({4, 5});
  Tensor s = t.slice(1, 1, 5, 2);
  EXPECT_TRUE(s.shares_storage(t));
  EXPECT_EQ(s.to_vector<float>(), (std::vector<float>{1, 3, 6, 8, 11, 13, 16, 18}));
  EXPECT_EQ(t.narrow(0, 2, 1).to_vector<float>(), (std::vector<float>{10, 11, 12, 13, 14}));
  EXPECT_EQ(t.select(1, -1).to_vector<float>(), (std::vector<float>{4, 9, 14, 19}));
  s.fill_(-1);
  EXPECT_EQ(t.to_vector<float>()[1], -1);
}

TEST(Tensor, ViewReshapeExpandSqueeze) {
  Tensor t = iota({2, 6});
  EXPECT_EQ(t.view({3, -1}).shape(), (Shape{3, 4}));
  EXPECT_THROW(t.transpose(0, 1).view({12}), Error);
  Tensor r = t.transpose(0, 1).reshape({12});
  EXPECT_EQ(r.to_vector<float>()[1], 6);
  Tensor e = iota({3, 1}).expand({2, 3, 4});
  EXPECT_EQ(e.strides(), (Shape{0, 1, 0}));
  EXPECT_EQ(e.contiguous().to_vector<float>()[5], 1);
  EXPECT_EQ(iota({1, 3}).squeeze(0).shape(), (Shape{3}));
  EXPECT_EQ(iota({3}).unsqueeze(-1).shape(), (Shape{3, 1}));
  EXPECT_EQ(iota({2, 3, 4}).permute({2, 0, 1}).shape(), (Shape{4, 2, 3}));
  EXPECT_EQ(iota({2, 3, 4}).flatten(1).shape(), (Shape{2, 12}));
}

TEST(Tensor, ViewOfSplitDimsOfANonContiguousTensor) {
  // [4, 6] transposed is [6, 4] with strides [1, 6]; splitting dim 0 keeps it a view.
  Tensor t = iota({4, 6}).transpose(0, 1);
  Tensor v = t.view({2, 3, 4});
  EXPECT_TRUE(v.shares_storage(t));
  EXPECT_EQ(v.contiguous().to_vector<float>(), t.contiguous().to_vector<float>());
}

TEST(Tensor, ErrorsSayWhatWasExpected) {
  Tensor t = iota({2, 3});
  try {
    t.view({4, 2});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not hold 6 elements"), std::string::npos) << e.what();
  }
  try {
    ops::add(t, iota({4}));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[2, 3] and [4] do not broadcast"), std::string::npos) << e.what();
  }
  EXPECT_THROW(t.data<double>(), Error);
  EXPECT_THROW(t.transpose(0, 2), Error);
  EXPECT_THROW(ops::add(t, t.to(DType::F64)), Error);
}

TEST(Tensor, PrintsShapeDtypeAndValues) { EXPECT_EQ(iota({2, 2}).str(), "Tensor([2, 2], f32, cpu) [0, 1, 2, 3]"); }

TEST(Tensor, CopyBroadcastsAndConverts) {
  Tensor dst = Tensor::empty({2, 3}, DType::F64);
  dst.copy_(Tensor::from<float>({1, 2, 3}));
  EXPECT_EQ(dst.to_vector<double>(), (std::vector<double>{1, 2, 3, 1, 2, 3}));
}

TEST(Tensor, CudaTensorsFailClearlyWithoutAGpu) {
  if (cuda::available()) GTEST_SKIP() << "a GPU is present";
  EXPECT_THROW(Tensor::empty({2}, DType::F32, Device::cuda()), Error);
}

}  // namespace
}  // namespace bvllm
