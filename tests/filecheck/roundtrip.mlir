// RUN: irfuse-opt %s | irfuse-opt | filecheck %s
// RUN: irfuse-opt %s --print-op-generic | irfuse-opt | filecheck %s
// RUN: xdsl-opt %s | filecheck %s

func.func @ops(%x: tensor<?x4096xbf16>, %r: tensor<?x4096xbf16>, %w: tensor<4096xbf16>, %s: tensor<1xf32>,
               %q: tensor<2x8x16x64xf16>, %k: tensor<2x2x16x64xf16>, %v: tensor<2x2x16x64xf16>) {
  %y, %ro = irfuse.fused_add_rms_norm %x, %r, %w scale %s {eps = 9.9999999747524271e-07 : f64, quant = #irfuse.quant<static>} : tensor<?x4096xbf16>, tensor<?x4096xbf16>, tensor<4096xbf16>, tensor<1xf32> -> tensor<?x4096xf8E4M3FN>, tensor<?x4096xbf16>
  %n = irfuse.rms_norm %x, %w {eps = 1.0e-05 : f64, gemma} : tensor<?x4096xbf16>, tensor<4096xbf16> -> tensor<?x4096xbf16>
  %g, %gs = irfuse.quant %x {quant = #irfuse.quant<per_group 128 col ue8m0>} : tensor<?x4096xbf16> -> tensor<?x4096xf8E4M3FN>, tensor<?x32xf32>
  %t, %ts = irfuse.quant %x {quant = #irfuse.quant<per_token>} : tensor<?x4096xbf16> -> tensor<?x4096xf8E4M3FN>, tensor<?x1xf32>
  %ti, %tis = irfuse.quant %x {quant = #irfuse.quant<per_token in_dtype>} : tensor<?x4096xbf16> -> tensor<?x4096xf8E4M3FN>, tensor<?x1xf32>
  %gi, %gis = irfuse.quant %x {quant = #irfuse.quant<per_group 128 col in_dtype>} : tensor<?x4096xbf16> -> tensor<?x4096xf8E4M3FN>, tensor<?x32xf32>
  %sd = irfuse.quant %x scale %s {quant = #irfuse.quant<static div>} : tensor<?x4096xbf16>, tensor<1xf32> -> tensor<?x4096xf8E4M3FN>
  %sw, %sh = irfuse.fused_add_rms_norm %x, %r, %w x_weight(%w : tensor<4096xbf16>) {eps = 1.0e-06 : f64, gemma, rounded_sum, x_eps = 1.0e-05 : f64} : tensor<?x4096xbf16>, tensor<?x4096xbf16>, tensor<4096xbf16> -> tensor<?x4096xbf16>, tensor<?x4096xbf16>
  %pq, %ph, %ps = irfuse.rms_norm_add %x, %r, %w {eps = 1.0e-06 : f64, fp32_weight_mul, quant = #irfuse.quant<per_token>} : tensor<?x4096xbf16>, tensor<?x4096xbf16>, tensor<4096xbf16> -> tensor<?x4096xf8E4M3FN>, tensor<?x4096xbf16>, tensor<?x1xf32>
  %a = irfuse.attention %q, %k, %v {scale = 0.125 : f64, causal = "bottom_right", layout = "bhsd"} : tensor<2x8x16x64xf16>, tensor<2x2x16x64xf16>, tensor<2x2x16x64xf16> -> tensor<2x8x16x64xf16>
  %ar = irfuse.all_reduce %x {group = "tp"} : tensor<?x4096xbf16> -> tensor<?x4096xbf16>
  %c = aten.call "aten.mean.dim"(%x) {args = [#aten.ref<0>, [-1 : i64], true], kwargs = {dtype = f32}} : (tensor<?x4096xbf16>) -> tensor<?x1xf32>
  func.return
}

// CHECK:      irfuse.fused_add_rms_norm %{{.*}}, %{{.*}}, %{{.*}} scale %{{.*}} {eps = 9.9999999747524271e-07 : f64, quant = #irfuse.quant<static>}
// CHECK:      irfuse.rms_norm %{{.*}}, %{{.*}} {eps = 1.000000e-05 : f64, gemma}
// CHECK:      irfuse.quant %{{.*}} {quant = #irfuse.quant<per_group 128 col ue8m0>} : tensor<?x4096xbf16> -> tensor<?x4096xf8E4M3FN>, tensor<?x32xf32>
// CHECK:      irfuse.quant %{{.*}} {quant = #irfuse.quant<per_token>}
// CHECK:      irfuse.quant %{{.*}} {quant = #irfuse.quant<per_token in_dtype>}
// CHECK:      irfuse.quant %{{.*}} {quant = #irfuse.quant<per_group 128 col in_dtype>}
// CHECK:      irfuse.quant %{{.*}} scale %{{.*}} {quant = #irfuse.quant<static div>}
// CHECK:      irfuse.fused_add_rms_norm %{{.*}}, %{{.*}}, %{{.*}} x_weight(%{{.*}} : tensor<4096xbf16>) {eps = 1.000000e-06 : f64, gemma, rounded_sum, x_eps = 1.000000e-05 : f64}
// CHECK:      irfuse.rms_norm_add %{{.*}}, %{{.*}}, %{{.*}} {eps = 1.000000e-06 : f64, fp32_weight_mul, quant = #irfuse.quant<per_token>} : {{.*}} -> tensor<?x4096xf8E4M3FN>, tensor<?x4096xbf16>, tensor<?x1xf32>
// CHECK:      irfuse.attention %{{.*}}, %{{.*}}, %{{.*}} {scale = 1.250000e-01 : f64, causal = "bottom_right", layout = "bhsd"}
// CHECK:      irfuse.all_reduce %{{.*}} {group = "tp"}
// CHECK:      aten.call "aten.mean.dim"(%{{.*}}) {args = [#aten.ref<0>, [-1 : i64], true], kwargs = {dtype = f32}}

// Optional operands of several kinds stay unambiguous in the type list.
func.func @optional_groups(%q: tensor<1x2x8x64xf16>, %m: tensor<1x1x8x8xi1>, %s: tensor<1xf32>, %x: tensor<4x64xbf16>, %r: tensor<4x64xbf16>, %w: tensor<64xbf16>, %eps: tensor<f64>) {
  %a = irfuse.attention %q, %q, %q scale %s {scale = 0.125 : f64, causal = "none", layout = "bs_hd", quant = #irfuse.quant<static>} : tensor<1x2x8x64xf16>, tensor<1x2x8x64xf16>, tensor<1x2x8x64xf16> scale tensor<1xf32> -> tensor<1x8x128xf8E4M3FN>
  %b = irfuse.attention %q, %q, %q mask %m {scale = 0.125 : f64, causal = "none", layout = "bhsd"} : tensor<1x2x8x64xf16>, tensor<1x2x8x64xf16>, tensor<1x2x8x64xf16> mask tensor<1x1x8x8xi1> -> tensor<1x2x8x64xf16>
  %t8, %ts = irfuse.attention %q, %q, %q {scale = 0.125 : f64, causal = "none", layout = "bs_hd", quant = #irfuse.quant<per_token>} : tensor<1x2x8x64xf16>, tensor<1x2x8x64xf16>, tensor<1x2x8x64xf16> -> tensor<1x8x128xf8E4M3FN>, tensor<1x8x1xf32>
  %o, %lse = irfuse.attention %q, %q, %q {scale = 0.125 : f64, causal = "none", layout = "bhsd"} : tensor<1x2x8x64xf16>, tensor<1x2x8x64xf16>, tensor<1x2x8x64xf16> -> tensor<1x2x8x64xf16> lse tensor<1x2x8xf32>
  %y, %ro = irfuse.all_reduce_rms_norm %x residual %r, %w {group = "tp", eps = 1.0e-06 : f64} : tensor<4x64xbf16> residual tensor<4x64xbf16>, tensor<64xbf16> -> tensor<4x64xbf16> residual tensor<4x64xbf16>
  %e = irfuse.rms_norm %x, %w eps(%eps : tensor<f64>) scale %s {quant = #irfuse.quant<static>} : tensor<4x64xbf16>, tensor<64xbf16>, tensor<1xf32> -> tensor<4x64xf8E4M3FN>
  %ey, %eh = irfuse.fused_add_rms_norm %x, %r, %w eps(%eps : tensor<f64>) : tensor<4x64xbf16>, tensor<4x64xbf16>, tensor<64xbf16> -> tensor<4x64xbf16>, tensor<4x64xbf16>
  func.return
}
// CHECK-LABEL: func.func @optional_groups
// CHECK:         irfuse.attention {{.*}} scale tensor<1xf32> -> tensor<1x8x128xf8E4M3FN>
// CHECK:         irfuse.attention {{.*}} mask tensor<1x1x8x8xi1> -> tensor<1x2x8x64xf16>
// CHECK:         irfuse.attention {{.*}} -> tensor<1x8x128xf8E4M3FN>, tensor<1x8x1xf32>
// CHECK:         irfuse.attention {{.*}} -> tensor<1x2x8x64xf16> lse tensor<1x2x8xf32>
// CHECK:         irfuse.all_reduce_rms_norm %x residual %r, %w {{.*}} residual tensor<4x64xbf16>
// CHECK:         irfuse.rms_norm %x, %w eps(%eps : tensor<f64>) scale %s {quant = #irfuse.quant<static>} : tensor<4x64xbf16>, tensor<64xbf16>, tensor<1xf32> -> tensor<4x64xf8E4M3FN>
// CHECK:         irfuse.fused_add_rms_norm %x, %r, %w eps(%eps : tensor<f64>) : tensor<4x64xbf16>

// MLA (q [T, N, Dn+Dr], kv_c [Tk, L], k_pe [Tk, 1, Dr], w_uk [N, Dn, L], w_uv [N, L, Dv]:
// out [T, N*Dv]) and the merge of two partial attention states (out [T, H, D], lse [H, T]).
func.func @mla_and_merge(%q: tensor<4x2x48xbf16>, %kv: tensor<9x64xbf16>, %pe: tensor<9x1x16xbf16>,
                         %wk: tensor<2x32x64xbf16>, %wv: tensor<2x64x32xbf16>, %s: tensor<1xf32>,
                         %o: tensor<4x2x32xbf16>, %l: tensor<2x4xf32>) {
  %m, %ms = irfuse.mla_attention %q, %kv, %pe, %wk, %wv {scale = 0.125 : f64, causal, quant = #irfuse.quant<per_token>} : tensor<4x2x48xbf16>, tensor<9x64xbf16>, tensor<9x1x16xbf16>, tensor<2x32x64xbf16>, tensor<2x64x32xbf16> -> tensor<4x64xf8E4M3FN>, tensor<4x1xf32>
  %mo, %ml = irfuse.merge_attn_states %o, %l, %o, %l scale %s {quant = #irfuse.quant<static>} : tensor<4x2x32xbf16>, tensor<2x4xf32>, tensor<4x2x32xbf16>, tensor<2x4xf32>, tensor<1xf32> -> tensor<4x2x32xf8E4M3FN>, tensor<2x4xf32>
  func.return
}
// CHECK-LABEL: func.func @mla_and_merge
// CHECK:      irfuse.mla_attention %{{.*}} {scale = 1.250000e-01 : f64, causal, quant = #irfuse.quant<per_token>} : {{.*}} -> tensor<4x64xf8E4M3FN>, tensor<4x1xf32>
// CHECK:      irfuse.merge_attn_states %{{.*}} scale %{{.*}} {quant = #irfuse.quant<static>} : {{.*}} -> tensor<4x2x32xf8E4M3FN>, tensor<2x4xf32>
