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
// CHECK-NEXT:    %q8 = irfuse.attention %q, %k, %v scale %s {scale = 1.250000e-01 : f64, causal = "top_left", layout = "bs_hd", quant = #irfuse.quant<static div>} : tensor<2x4x16x64xbf16>, tensor<2x2x16x64xbf16>, tensor<2x2x16x64xbf16> scale tensor<1xf32> -> tensor<2x16x256xf8E4M3FN>
// CHECK-NEXT:    func.return %q8

// -----

// Head dim 80 runs on tiles of 128: fused.
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
// CHECK-NEXT:    %q8 = irfuse.attention %q, %q, %q scale %s {scale = 1.000000e-01 : f64, causal = "none", layout = "bs_hd", quant = #irfuse.quant<static div>} : tensor<1x2x8x80xbf16>, tensor<1x2x8x80xbf16>, tensor<1x2x8x80xbf16> scale tensor<1xf32> -> tensor<1x8x160xf8E4M3FN>
// CHECK-NEXT:    func.return %q8

// -----

// Head dim 40 (not a multiple of 16) has no kernel: unchanged.
func.func @head_dim_40(%q: tensor<1x2x8x40xbf16>, %s: tensor<1xf32>) -> tensor<1x8x80xf8E4M3FN> {
  %o = irfuse.attention %q, %q, %q {scale = 0.1 : f64, causal = "none", layout = "bhsd"} : tensor<1x2x8x40xbf16>, tensor<1x2x8x40xbf16>, tensor<1x2x8x40xbf16> -> tensor<1x2x8x40xbf16>
  %t = aten.call "aten.transpose.int"(%o) {args = [#aten.ref<0>, 1 : i64, 2 : i64], kwargs = {}} : (tensor<1x2x8x40xbf16>) -> tensor<1x8x2x40xbf16>
  %y = aten.call "aten.reshape.default"(%t) {args = [#aten.ref<0>, [1 : i64, 8 : i64, 80 : i64]], kwargs = {}} : (tensor<1x8x2x40xbf16>) -> tensor<1x8x80xbf16>
  %d = aten.call "aten.div.Tensor"(%y, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<1x8x80xbf16>, tensor<1xf32>) -> tensor<1x8x80xf32>
  %c = aten.call "aten.clamp.default"(%d) {args = [#aten.ref<0>, -448 : i64, 448 : i64], kwargs = {}} : (tensor<1x8x80xf32>) -> tensor<1x8x80xf32>
  %q8 = aten.call "aten._to_copy.default"(%c) {args = [#aten.ref<0>], kwargs = {dtype = f8E4M3FN}} : (tensor<1x8x80xf32>) -> tensor<1x8x80xf8E4M3FN>
  func.return %q8 : tensor<1x8x80xf8E4M3FN>
}
// CHECK-LABEL: func.func @head_dim_40
// CHECK:         irfuse.attention {{.*}} layout = "bhsd"
// CHECK:         aten.call "aten.transpose.int"

// -----

// Decode (one token, 4 query heads per kv head): a per-token quant of the [B*S, H*D] rows
// goes into the decode kernel's combine, which holds a token's whole row.
func.func @decode_per_token(%q: tensor<2x8x1x64xbf16>, %k: tensor<2x2x512x64xbf16>) -> (tensor<2x512xf8E4M3FN>, tensor<2x1xf32>) {
  %o = irfuse.attention %q, %k, %k {scale = 0.125 : f64, causal = "none", layout = "bhsd"} : tensor<2x8x1x64xbf16>, tensor<2x2x512x64xbf16>, tensor<2x2x512x64xbf16> -> tensor<2x8x1x64xbf16>
  %t = aten.call "aten.transpose.int"(%o) {args = [#aten.ref<0>, 1 : i64, 2 : i64], kwargs = {}} : (tensor<2x8x1x64xbf16>) -> tensor<2x1x8x64xbf16>
  %y = aten.call "aten.view.default"(%t) {args = [#aten.ref<0>, [2 : i64, 1 : i64, 512 : i64]], kwargs = {}} : (tensor<2x1x8x64xbf16>) -> tensor<2x1x512xbf16>
  %rows = aten.call "aten.view.default"(%y) {args = [#aten.ref<0>, [2 : i64, 512 : i64]], kwargs = {}} : (tensor<2x1x512xbf16>) -> tensor<2x512xbf16>
  %q8, %s8 = irfuse.quant %rows {quant = #irfuse.quant<per_token>} : tensor<2x512xbf16> -> tensor<2x512xf8E4M3FN>, tensor<2x1xf32>
  func.return %q8, %s8 : tensor<2x512xf8E4M3FN>, tensor<2x1xf32>
}
// CHECK-LABEL: func.func @decode_per_token
// CHECK-NEXT:    %q8, %s8 = irfuse.attention %q, %k, %k {scale = 1.250000e-01 : f64, causal = "none", layout = "bs_hd", quant = #irfuse.quant<per_token>} : tensor<2x8x1x64xbf16>, tensor<2x2x512x64xbf16>, tensor<2x2x512x64xbf16> -> tensor<2x512xf8E4M3FN>, tensor<2x1xf32>
// CHECK-NEXT:    func.return %q8, %s8

// -----

// Prefill (128 query rows per kv head): a per-token scale spans all heads of a token,
// which the prefill kernel (one head per program) does not hold: unchanged.
func.func @prefill_per_token(%q: tensor<1x2x128x64xbf16>) -> (tensor<128x128xf8E4M3FN>, tensor<128x1xf32>) {
  %o = irfuse.attention %q, %q, %q {scale = 0.125 : f64, causal = "top_left", layout = "bhsd"} : tensor<1x2x128x64xbf16>, tensor<1x2x128x64xbf16>, tensor<1x2x128x64xbf16> -> tensor<1x2x128x64xbf16>
  %t = aten.call "aten.transpose.int"(%o) {args = [#aten.ref<0>, 1 : i64, 2 : i64], kwargs = {}} : (tensor<1x2x128x64xbf16>) -> tensor<1x128x2x64xbf16>
  %rows = aten.call "aten.reshape.default"(%t) {args = [#aten.ref<0>, [128 : i64, 128 : i64]], kwargs = {}} : (tensor<1x128x2x64xbf16>) -> tensor<128x128xbf16>
  %q8, %s8 = irfuse.quant %rows {quant = #irfuse.quant<per_token>} : tensor<128x128xbf16> -> tensor<128x128xf8E4M3FN>, tensor<128x1xf32>
  func.return %q8, %s8 : tensor<128x128xf8E4M3FN>, tensor<128x1xf32>
}
// CHECK-LABEL: func.func @prefill_per_token
// CHECK:         irfuse.attention {{.*}} layout = "bhsd"
// CHECK:         irfuse.quant %rows

// -----

// An explicit (padding) mask stays an operand of the fused op.
func.func @masked_nvfp4(%q: tensor<1x2x64x64xbf16>, %m: tensor<1x1x64x64xi1>, %g: tensor<1xf32>) -> (tensor<64x64xui8>, tensor<128x2xi32>) {
  %o = irfuse.attention %q, %q, %q mask %m {scale = 0.125 : f64, causal = "none", layout = "bhsd"} : tensor<1x2x64x64xbf16>, tensor<1x2x64x64xbf16>, tensor<1x2x64x64xbf16> mask tensor<1x1x64x64xi1> -> tensor<1x2x64x64xbf16>
  %t = aten.call "aten.transpose.int"(%o) {args = [#aten.ref<0>, 1 : i64, 2 : i64], kwargs = {}} : (tensor<1x2x64x64xbf16>) -> tensor<1x64x2x64xbf16>
  %rows = aten.call "aten.reshape.default"(%t) {args = [#aten.ref<0>, [64 : i64, 128 : i64]], kwargs = {}} : (tensor<1x64x2x64xbf16>) -> tensor<64x128xbf16>
  %q4, %s4 = irfuse.quant %rows scale %g {quant = #irfuse.quant<nvfp4>} : tensor<64x128xbf16>, tensor<1xf32> -> tensor<64x64xui8>, tensor<128x2xi32>
  func.return %q4, %s4 : tensor<64x64xui8>, tensor<128x2xi32>
}
// CHECK-LABEL: func.func @masked_nvfp4
// CHECK-NEXT:    %q4, %s4 = irfuse.attention %q, %q, %q mask %m scale %g {{.*}}quant = #irfuse.quant<nvfp4>}
// CHECK-NEXT:    func.return %q4, %s4

// -----

// Decode over 65536 (batch, kv head)s, more than a grid's y dimension holds: the decode
// kernel's grid is 1-D, so it fuses.
func.func @decode_past_65535_rows(%q: tensor<65536x4x1x64xbf16>, %k: tensor<65536x1x16x64xbf16>, %s: tensor<1xf32>) -> tensor<65536x1x256xf8E4M3FN> {
  %o = irfuse.attention %q, %k, %k {scale = 0.125 : f64, causal = "none", layout = "bhsd"} : tensor<65536x4x1x64xbf16>, tensor<65536x1x16x64xbf16>, tensor<65536x1x16x64xbf16> -> tensor<65536x4x1x64xbf16>
  %t = aten.call "aten.transpose.int"(%o) {args = [#aten.ref<0>, 1 : i64, 2 : i64], kwargs = {}} : (tensor<65536x4x1x64xbf16>) -> tensor<65536x1x4x64xbf16>
  %y = aten.call "aten.reshape.default"(%t) {args = [#aten.ref<0>, [65536 : i64, 1 : i64, 256 : i64]], kwargs = {}} : (tensor<65536x1x4x64xbf16>) -> tensor<65536x1x256xbf16>
  %d = aten.call "aten.div.Tensor"(%y, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<65536x1x256xbf16>, tensor<1xf32>) -> tensor<65536x1x256xf32>
  %c = aten.call "aten.clamp.default"(%d) {args = [#aten.ref<0>, -448 : i64, 448 : i64], kwargs = {}} : (tensor<65536x1x256xf32>) -> tensor<65536x1x256xf32>
  %q8 = aten.call "aten._to_copy.default"(%c) {args = [#aten.ref<0>], kwargs = {dtype = f8E4M3FN}} : (tensor<65536x1x256xf32>) -> tensor<65536x1x256xf8E4M3FN>
  func.return %q8 : tensor<65536x1x256xf8E4M3FN>
}
// CHECK-LABEL: func.func @decode_past_65535_rows
// CHECK-NEXT:    %q8 = irfuse.attention %q, %k, %k scale %s {{.*}}layout = "bs_hd", quant = #irfuse.quant<static div>}
// CHECK-NEXT:    func.return %q8

// -----

// The scale is cast to fp32 after the attention (a 16-bit buffer; Inductor schedules the
// cast late): the fused op goes where the quant was.
func.func @scale_made_after(%q: tensor<2x4x16x64xbf16>, %k: tensor<2x2x16x64xbf16>, %s16: tensor<1xbf16>) -> tensor<2x16x256xf8E4M3FN> {
  %o = irfuse.attention %q, %k, %k {scale = 0.125 : f64, causal = "top_left", layout = "bhsd"} : tensor<2x4x16x64xbf16>, tensor<2x2x16x64xbf16>, tensor<2x2x16x64xbf16> -> tensor<2x4x16x64xbf16>
  %t = aten.call "aten.transpose.int"(%o) {args = [#aten.ref<0>, 1 : i64, 2 : i64], kwargs = {}} : (tensor<2x4x16x64xbf16>) -> tensor<2x16x4x64xbf16>
  %y = aten.call "aten.reshape.default"(%t) {args = [#aten.ref<0>, [2 : i64, 16 : i64, 256 : i64]], kwargs = {}} : (tensor<2x16x4x64xbf16>) -> tensor<2x16x256xbf16>
  %s = aten.call "prims.convert_element_type.default"(%s16) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<1xbf16>) -> tensor<1xf32>
  %yf = aten.call "prims.convert_element_type.default"(%y) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<2x16x256xbf16>) -> tensor<2x16x256xf32>
  %d = aten.call "aten.div.Tensor"(%yf, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<2x16x256xf32>, tensor<1xf32>) -> tensor<2x16x256xf32>
  %c = aten.call "aten.clamp.default"(%d) {args = [#aten.ref<0>, -4.480000e+02 : f64, 4.480000e+02 : f64], kwargs = {}} : (tensor<2x16x256xf32>) -> tensor<2x16x256xf32>
  %q8 = aten.call "prims.convert_element_type.default"(%c) {args = [#aten.ref<0>, f8E4M3FN], kwargs = {}} : (tensor<2x16x256xf32>) -> tensor<2x16x256xf8E4M3FN>
  func.return %q8 : tensor<2x16x256xf8E4M3FN>
}
// CHECK-LABEL: func.func @scale_made_after
// CHECK-NEXT:    %s = aten.call "prims.convert_element_type.default"(%s16)
// CHECK-NEXT:    %q8 = irfuse.attention %q, %k, %k scale %s {{.*}}quant = #irfuse.quant<static div>}
// CHECK-NEXT:    func.return %q8

// -----

// One query row: [B, H, 1, D] viewed straight as [B, 1, H*D] (no transpose needed).
func.func @decode_without_transpose(%q: tensor<2x8x1x64xbf16>, %k: tensor<2x2x512x64xbf16>, %s: tensor<1xf32>) -> tensor<2x1x512xf8E4M3FN> {
  %o = irfuse.attention %q, %k, %k {scale = 0.125 : f64, causal = "none", layout = "bhsd"} : tensor<2x8x1x64xbf16>, tensor<2x2x512x64xbf16>, tensor<2x2x512x64xbf16> -> tensor<2x8x1x64xbf16>
  %y = aten.call "aten.view.default"(%o) {args = [#aten.ref<0>, [2 : i64, 1 : i64, 512 : i64]], kwargs = {}} : (tensor<2x8x1x64xbf16>) -> tensor<2x1x512xbf16>
  %q8 = irfuse.quant %y scale %s {quant = #irfuse.quant<static>} : tensor<2x1x512xbf16>, tensor<1xf32> -> tensor<2x1x512xf8E4M3FN>
  func.return %q8 : tensor<2x1x512xf8E4M3FN>
}
// CHECK-LABEL: func.func @decode_without_transpose
// CHECK-NEXT:    %q8 = irfuse.attention %q, %k, %k scale %s {{.*}}layout = "bs_hd", quant = #irfuse.quant<static>}
// CHECK-NEXT:    func.return %q8
