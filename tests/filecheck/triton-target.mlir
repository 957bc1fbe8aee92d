// RUN: irfuse-opt %s -t triton | filecheck %s

func.func @f(%x: tensor<?x64xbf16>, %r: tensor<?x64xbf16>, %w: tensor<64xbf16>, %s: tensor<1xf32>) -> (tensor<?x64xf8E4M3FN>, tensor<?x64xbf16>) {
  %q, %h = irfuse.fused_add_rms_norm %x, %r, %w scale %s {eps = 1.0e-06 : f64, quant = #irfuse.quant<static>} : tensor<?x64xbf16>, tensor<?x64xbf16>, tensor<64xbf16>, tensor<1xf32> -> tensor<?x64xf8E4M3FN>, tensor<?x64xbf16>
  func.return %q, %h : tensor<?x64xf8E4M3FN>, tensor<?x64xbf16>
}

func.func @attention(%a: tensor<1x2x8x64xf16>, %s: tensor<1xf32>) -> tensor<1x8x128xf8E4M3FN> {
  %o = irfuse.attention %a, %a, %a scale %s {scale = 0.125 : f64, causal = "none", layout = "bs_hd", quant = #irfuse.quant<static>} : tensor<1x2x8x64xf16>, tensor<1x2x8x64xf16>, tensor<1x2x8x64xf16> scale tensor<1xf32> -> tensor<1x8x128xf8E4M3FN>
  func.return %o : tensor<1x8x128xf8E4M3FN>
}
// CHECK:      # %q = irfuse.fused_add_rms_norm -> kernel irfuse_fused_add_rms_norm_static_fp8
// CHECK:      Fuses: add + rms_norm + static fp8 quant.
// CHECK:      def round_to(
// CHECK:      def round_to_e4m3(
// CHECK:      def to_fp8(
// CHECK:      def div_by(
// CHECK:      @triton.jit
// CHECK-NEXT: def irfuse_fused_add_rms_norm_static_fp8(
// CHECK:      # residual add
// CHECK:      # rms_norm over the row
// CHECK:      # epilogue: static per-tensor fp8
// CHECK:      # %o = irfuse.attention -> kernel irfuse_attention_static_fp8
// CHECK:      Fuses: attention + static fp8 quant.
