// RUN: irfuse-opt %s --split-input-file -p fuse-attention-quant | filecheck %s

// SDPA output moved to [B, S, H*D] and quantized: one attention op writing fp8.
func.func @attention_quant(%q: tensor<2x4x16x64xbf16>, %k: tensor<2x2x16x64xbf16>, %v: tensor<2x2x16x64xbf16>, %s: tensor<1xf32>) -> tensor<2x16x256xf8E4M3FN> {
  %o = irfuse.attention %q, %k, %v {scale = 0.125 : f64, causal = "top_left", layout = "bhsd"} : tensor<2x4x16x64xbf16>, tensor<2x2x16x64xbf16>, tensor<2x2x16x64xbf16> -> tensor<2x4x16x64xbf16>
  %t = aten.call "aten.permute.default"(%o) {args = [#aten.ref<0>, [0 : i64, 2 : i64, 1 : i64, 3 : i64]], kwargs = {}} : (tensor<2x4x16x64xbf16>) -> tensor<2x16x4x64xbf16>
  %c = aten.call "aten.clone.default"(%t) {args = [#aten.ref<0>], kwargs = {memory_format = "torch.contiguous_format"}} : (tensor<2x16x4x64xbf16>) -> tensor<2x16x4x64xbf16>
  %y = aten.call "aten.view.default"(%c) {args = [#aten.ref<0>, [2 : i64, 16 : i64, 256 : i64]], kwargs = {}} : (tensor<2x16x4x64xbf16>) -> tensor<2x16x256xbf16>
  %yf = aten.call "prims.convert_element_type.default"(%y) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<2x16x256xbf16>) -> tensor<2x16x256xf32>
  %d = aten.call "aten.div.Tensor"(%yf, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<2x16x256xf32>, tensor<1xf32>) -> tensor<2x16x256xf32>
  %lo = aten.call "aten.clamp_min.default"(%d) {args = [#aten.ref<0>, -448 : i64], kwargs = {}} : (tensor<2x16x256xf32>) -> tensor<2x16x256xf32>
  %hi = aten.call "aten.clamp_max.default"(%lo) {args = [#aten.ref<0>, 448 : i64], kwargs = {}} : (tensor<2x16x256xf32>) -> tensor<2x16x256xf32>
  %q8 = aten.call "prims.convert_element_type.default"(%hi) {args = [#aten.ref<0>, f8E4M3FN], kwargs = {}} : (tensor<2x16x256xf32>) -> tensor<2x16x256xf8E4M3FN>
  func.return %q8 : tensor<2x16x256xf8E4M3FN>
}
// CHECK-LABEL: func.func @attention_quant
// CHECK-NEXT:    %q8 = irfuse.attention %q, %k, %v scale %s {scale = 1.250000e-01 : f64, causal = "top_left", layout = "bs_hd", quant = #irfuse.quant<static>} : tensor<2x4x16x64xbf16>, tensor<2x2x16x64xbf16>, tensor<2x2x16x64xbf16> scale tensor<1xf32> -> tensor<2x16x256xf8E4M3FN>
// CHECK-NEXT:    func.return %q8

// -----

// Head dim 80 has no kernel: unchanged.
func.func @head_dim_80(%q: tensor<1x2x8x80xbf16>, %s: tensor<1xf32>) -> tensor<1x8x160xf8E4M3FN> {
  %o = irfuse.attention %q, %q, %q {scale = 0.1 : f64, causal = "none", layout = "bhsd"} : tensor<1x2x8x80xbf16>, tensor<1x2x8x80xbf16>, tensor<1x2x8x80xbf16> -> tensor<1x2x8x80xbf16>
  %t = aten.call "aten.transpose.int"(%o) {args = [#aten.ref<0>, 1 : i64, 2 : i64], kwargs = {}} : (tensor<1x2x8x80xbf16>) -> tensor<1x8x2x80xbf16>
  %y = aten.call "aten.reshape.default"(%t) {args = [#aten.ref<0>, [1 : i64, 8 : i64, 160 : i64]], kwargs = {}} : (tensor<1x8x2x80xbf16>) -> tensor<1x8x160xbf16>
  %d = aten.call "aten.div.Tensor"(%y, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<1x8x160xbf16>, tensor<1xf32>) -> tensor<1x8x160xf32>
  %c = aten.call "aten.clamp.default"(%d) {args = [#aten.ref<0>, -448 : i64, 448 : i64], kwargs = {}} : (tensor<1x8x160xf32>) -> tensor<1x8x160xf32>
  %q8 = aten.call "aten._to_copy.default"(%c) {args = [#aten.ref<0>], kwargs = {dtype = f8E4M3FN}} : (tensor<1x8x160xf32>) -> tensor<1x8x160xf8E4M3FN>
  func.return %q8 : tensor<1x8x160xf8E4M3FN>
}
// CHECK-LABEL: func.func @head_dim_80
// CHECK:         irfuse.attention {{.*}} layout = "bhsd"
// CHECK:         aten.call "aten.transpose.int"
