"""W build micro-benchmark: the old einsum kronecker_sum against the one-GEMM version, fwd+bwd, 1 thread."""
import torch, time
torch.set_num_threads(1)
from compacter.phm import kronecker_sum
def old(rule, fast):
    n, p, q = fast.shape[-3:]
    w = torch.einsum("iab,...ixy->...axby", rule, fast)
    return w.reshape(*fast.shape[:-3], n * p, n * q)
A = torch.randn(4,4,4, requires_grad=True); s = torch.randn(4,192,1, requires_grad=True); t = torch.randn(4,1,6, requires_grad=True)
torch.testing.assert_close(old(A, s@t), kronecker_sum(A, s@t))
for name, f in [("einsum", old), ("matmul", kronecker_sum)]*3:
    t0 = time.perf_counter()
    for _ in range(2000):
        w = f(A, torch.bmm(s, t)); w.sum().backward()
    print(name, f"{(time.perf_counter()-t0)/2000*1e6:.1f} us fwd+bwd")
