// RUN: not irfuse-opt %s -p no-such-pass 2>&1 | sed -e '1s/^/FIRST /' | filecheck %s --check-prefix=PASS
// RUN: not irfuse-opt %s 2>&1 | sed -e '1s/^/FIRST /' | filecheck %s --check-prefix=VERIFY
// RUN: echo 'func.func @f(%x: tensor<4xbf16>) { %y = irfuse.quant %x' > %t.mlir
// RUN: not irfuse-opt %t.mlir 2>&1 | sed -e '1s/^/FIRST /' | filecheck %s --check-prefix=PARSE
// RUN: not irfuse-opt %s -p 'raise-rms-norm{standalone=true' 2>&1 | sed -e '1s/^/FIRST /' | filecheck %s --check-prefix=PIPELINE
// RUN: cp %s %t.ir && not irfuse-opt -p raise-rms-norm %t.ir 2>&1 | sed -e '1s/^/FIRST /' | filecheck %s --check-prefix=EXT

// Each error is one line: the output's first (sed marks it FIRST) and its last (nothing
// after it: no traceback).
// PASS:   FIRST irfuse-opt: {{.*}}errors.mlir: Unrecognized passes: ['no-such-pass']; irfuse's passes: fuse-attention-quant, raise-rms-norm,{{.*$}}
// PASS-NOT: {{.}}
// VERIFY: FIRST irfuse-opt: {{.*}}errors.mlir: weight dtype f32 != input dtype bf16{{$}}
// VERIFY-NOT: {{.}}
// PARSE:  FIRST irfuse-opt: {{.*}}.mlir:{{[0-9]+}}:{{[0-9]+}}: Expected{{.*$}}
// PARSE-NOT: {{.}}
// PIPELINE: FIRST irfuse-opt: -p: 1:31: Malformed pass arguments, expected either a space or `}` here{{$}}
// PIPELINE-NOT: {{.}}
// EXT: FIRST irfuse-opt: {{.*}}.ir: Unrecognized file extension 'ir'{{$}}
// EXT-NOT: {{.}}

func.func @bad(%x: tensor<4x64xbf16>, %w: tensor<64xf32>) -> tensor<4x64xbf16> {
  %y = irfuse.rms_norm %x, %w {eps = 1.0e-06 : f64} : tensor<4x64xbf16>, tensor<64xf32> -> tensor<4x64xbf16>
  func.return %y : tensor<4x64xbf16>
}
