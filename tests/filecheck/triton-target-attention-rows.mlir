// RUN: irfuse-opt %s -t triton | filecheck %s

// A per-token scale spans a token's whole row: only the decode kernel (Hq/Hkv * Sq <= 64
// rows per kv head) holds one; past that there is no kernel to print, and irfuse-opt says so.
func.func @prefill_per_token(%q: tensor<1x8x16x64xf16>, %k: tensor<1x1x16x64xf16>) -> tensor<1x16x512xf8E4M3FN> {
  %o, %s = irfuse.attention %q, %k, %k {scale = 0.125 : f64, causal = "none", layout = "bs_hd", quant = #irfuse.quant<per_token>} : tensor<1x8x16x64xf16>, tensor<1x1x16x64xf16>, tensor<1x1x16x64xf16> -> tensor<1x16x512xf8E4M3FN>, tensor<1x16x1xf32>
  func.return %o : tensor<1x16x512xf8E4M3FN>
}
// CHECK: # %o = irfuse.attention: no attention kernel for a per_token epilogue past Hq/Hkv * Sq = 64 rows per kv head
