// RUN: irfuse-opt %s --split-input-file -p 'raise-fp8-quant{standalone=true}' | filecheck %s
// RUN: irfuse-opt %s --split-input-file -p raise-fp8-quant | filecheck %s --check-prefix=DEFAULT

// By default a quant is raised only where a producer can take it as its epilogue.
// DEFAULT-NOT: irfuse.quant

// Inductor's form: divide, clamp_min + clamp_max, convert.
func.func @divide_form(%y: tensor<?x64xbf16>, %s: tensor<1xf32>) -> tensor<?x64xf8E4M3FN> {
  %yf = aten.call "prims.convert_element_type.default"(%y) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<?x64xbf16>) -> tensor<?x64xf32>
  %d = aten.call "aten.div.Tensor"(%yf, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<?x64xf32>, tensor<1xf32>) -> tensor<?x64xf32>
  %lo = aten.call "aten.clamp_min.default"(%d) {args = [#aten.ref<0>, -448 : i64], kwargs = {}} : (tensor<?x64xf32>) -> tensor<?x64xf32>
  %hi = aten.call "aten.clamp_max.default"(%lo) {args = [#aten.ref<0>, 448 : i64], kwargs = {}} : (tensor<?x64xf32>) -> tensor<?x64xf32>
  %q = aten.call "prims.convert_element_type.default"(%hi) {args = [#aten.ref<0>, f8E4M3FN], kwargs = {}} : (tensor<?x64xf32>) -> tensor<?x64xf8E4M3FN>
  func.return %q : tensor<?x64xf8E4M3FN>
}
// CHECK-LABEL: func.func @divide_form
// CHECK-NEXT:    %{{.*}} = irfuse.quant %y scale %s {quant = #irfuse.quant<static div>} : tensor<?x64xbf16>, tensor<1xf32> -> tensor<?x64xf8E4M3FN>
// CHECK-NEXT:    func.return

// -----

// Multiply by the reciprocal (times 1.0), aten.clamp with float bounds.
func.func @reciprocal_form(%y: tensor<4x64xf32>, %s: tensor<1xf32>) -> tensor<4x64xf8E4M3FN> {
  %inv = aten.call "aten.reciprocal.default"(%s) {args = [#aten.ref<0>], kwargs = {}} : (tensor<1xf32>) -> tensor<1xf32>
  %inv1 = aten.call "aten.mul.Tensor"(%inv) {args = [#aten.ref<0>, 1.000000e+00 : f64], kwargs = {}} : (tensor<1xf32>) -> tensor<1xf32>
  %m = aten.call "aten.mul.Tensor"(%y, %inv1) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<1xf32>) -> tensor<4x64xf32>
  %c = aten.call "aten.clamp.default"(%m) {args = [#aten.ref<0>, -4.480000e+02 : f64, 4.480000e+02 : f64], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %q = aten.call "aten._to_copy.default"(%c) {args = [#aten.ref<0>], kwargs = {dtype = f8E4M3FN}} : (tensor<4x64xf32>) -> tensor<4x64xf8E4M3FN>
  func.return %q : tensor<4x64xf8E4M3FN>
}
// CHECK-LABEL: func.func @reciprocal_form
// CHECK-NEXT:    %{{.*}} = irfuse.quant %y scale %s {quant = #irfuse.quant<static>} : tensor<4x64xf32>, tensor<1xf32> -> tensor<4x64xf8E4M3FN>
// CHECK-NEXT:    func.return

// -----

// A per-row scale is not a static per-tensor quant.
func.func @per_row_scale(%y: tensor<4x64xf32>, %s: tensor<4x1xf32>) -> tensor<4x64xf8E4M3FN> {
  %d = aten.call "aten.div.Tensor"(%y, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<4x1xf32>) -> tensor<4x64xf32>
  %c = aten.call "aten.clamp.default"(%d) {args = [#aten.ref<0>, -448 : i64, 448 : i64], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %q = aten.call "aten._to_copy.default"(%c) {args = [#aten.ref<0>], kwargs = {dtype = f8E4M3FN}} : (tensor<4x64xf32>) -> tensor<4x64xf8E4M3FN>
  func.return %q : tensor<4x64xf8E4M3FN>
}
// CHECK-LABEL: func.func @per_row_scale
// CHECK-NOT:     irfuse.quant

// -----

// The clamp as two one-sided aten.clamps, x.clamp(min=-448.).clamp(max=448.).
func.func @split_clamp(%y: tensor<4x64xf32>, %s: tensor<1xf32>) -> tensor<4x64xf8E4M3FN> {
  %d = aten.call "aten.div.Tensor"(%y, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<1xf32>) -> tensor<4x64xf32>
  %lo = aten.call "aten.clamp.default"(%d) {args = [#aten.ref<0>, -4.480000e+02 : f64], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %hi = aten.call "aten.clamp.default"(%lo) {args = [#aten.ref<0>], kwargs = {max = 4.480000e+02 : f64}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %q = aten.call "aten._to_copy.default"(%hi) {args = [#aten.ref<0>], kwargs = {dtype = f8E4M3FN}} : (tensor<4x64xf32>) -> tensor<4x64xf8E4M3FN>
  func.return %q : tensor<4x64xf8E4M3FN>
}
// CHECK-LABEL: func.func @split_clamp
// CHECK-NEXT:    %{{.*}} = irfuse.quant %y scale %s {quant = #irfuse.quant<static div>} : tensor<4x64xf32>, tensor<1xf32> -> tensor<4x64xf8E4M3FN>
// CHECK-NEXT:    func.return

// -----

// The same quant twice (q and k projections with one activation scale) is one op; a
// quant with another scale is its own.
func.func @identical_quants(%y: tensor<4x64xf32>, %s: tensor<1xf32>, %t: tensor<1xf32>) -> (tensor<4x64xf8E4M3FN>, tensor<4x64xf8E4M3FN>, tensor<4x64xf8E4M3FN>) {
  %d1 = aten.call "aten.div.Tensor"(%y, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<1xf32>) -> tensor<4x64xf32>
  %c1 = aten.call "aten.clamp.default"(%d1) {args = [#aten.ref<0>, -448 : i64, 448 : i64], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %q1 = aten.call "aten._to_copy.default"(%c1) {args = [#aten.ref<0>], kwargs = {dtype = f8E4M3FN}} : (tensor<4x64xf32>) -> tensor<4x64xf8E4M3FN>
  %d2 = aten.call "aten.div.Tensor"(%y, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<1xf32>) -> tensor<4x64xf32>
  %c2 = aten.call "aten.clamp.default"(%d2) {args = [#aten.ref<0>, -448 : i64, 448 : i64], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %q2 = aten.call "aten._to_copy.default"(%c2) {args = [#aten.ref<0>], kwargs = {dtype = f8E4M3FN}} : (tensor<4x64xf32>) -> tensor<4x64xf8E4M3FN>
  %d3 = aten.call "aten.div.Tensor"(%y, %t) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<1xf32>) -> tensor<4x64xf32>
  %c3 = aten.call "aten.clamp.default"(%d3) {args = [#aten.ref<0>, -448 : i64, 448 : i64], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %q3 = aten.call "aten._to_copy.default"(%c3) {args = [#aten.ref<0>], kwargs = {dtype = f8E4M3FN}} : (tensor<4x64xf32>) -> tensor<4x64xf8E4M3FN>
  func.return %q1, %q2, %q3 : tensor<4x64xf8E4M3FN>, tensor<4x64xf8E4M3FN>, tensor<4x64xf8E4M3FN>
}
// CHECK-LABEL: func.func @identical_quants
// CHECK-NEXT:    %[[Q:.*]] = irfuse.quant %y scale %s {quant = #irfuse.quant<static div>}
// CHECK-NEXT:    %[[R:.*]] = irfuse.quant %y scale %t {quant = #irfuse.quant<static div>}
// CHECK-NEXT:    func.return %[[Q]], %[[Q]], %[[R]]

// -----

// A model's linear flattens the [B, S, K] norm result before quantizing it: the quant
// reads the norm's result (DEFAULT too: the norm can take it), its type stays [B*S, K].
func.func @flattened_norm_result(%x: tensor<2x3x64xbf16>, %w: tensor<64xbf16>, %s: tensor<1xf32>) -> tensor<6x64xf8E4M3FN> {
  %y = irfuse.rms_norm %x, %w {eps = 1.0e-06 : f64} : tensor<2x3x64xbf16>, tensor<64xbf16> -> tensor<2x3x64xbf16>
  %v = aten.call "aten.view.default"(%y) {args = [#aten.ref<0>, [-1 : i64, 64 : i64]], kwargs = {}} : (tensor<2x3x64xbf16>) -> tensor<6x64xbf16>
  %yf = aten.call "prims.convert_element_type.default"(%v) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<6x64xbf16>) -> tensor<6x64xf32>
  %d = aten.call "aten.div.Tensor"(%yf, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<6x64xf32>, tensor<1xf32>) -> tensor<6x64xf32>
  %c = aten.call "aten.clamp.default"(%d) {args = [#aten.ref<0>, -448 : i64, 448 : i64], kwargs = {}} : (tensor<6x64xf32>) -> tensor<6x64xf32>
  %q = aten.call "aten._to_copy.default"(%c) {args = [#aten.ref<0>], kwargs = {dtype = f8E4M3FN}} : (tensor<6x64xf32>) -> tensor<6x64xf8E4M3FN>
  func.return %q : tensor<6x64xf8E4M3FN>
}
// CHECK-LABEL: func.func @flattened_norm_result
// CHECK:         %{{.*}} = irfuse.quant %y scale %s {quant = #irfuse.quant<static div>} : tensor<2x3x64xbf16>, tensor<1xf32> -> tensor<6x64xf8E4M3FN>
// CHECK-NEXT:    func.return
// DEFAULT-LABEL: func.func @flattened_norm_result
// DEFAULT:         irfuse.quant %y scale %s {quant = #irfuse.quant<static div>} : tensor<2x3x64xbf16>, tensor<1xf32> -> tensor<6x64xf8E4M3FN>
