// Fused multi-step LIF neurons on the GPU: the forward over all T steps and its backpropagation
// through time, one thread per neuron (grid-stride), each membrane potential kept in a register.
//
// The numerics are those of worker/src/lif.rs (spikingjelly's LIFNode: hard reset, decay_input,
// detach_reset=False), step by step:
//   charge   h = v + ((x - leak) * k + 0)            (decay_input; leak = v - v_reset, or v when v_reset == 0)
//            h = (v - (leak * k + 0)) + x            (otherwise)
//   fire     s = (h >= v_threshold)
//   reset    v = s ? v_reset : h
// Every rounding step is an explicit round-to-nearest intrinsic (__fadd_rn, __fmul_rn, ...), which
// nvcc never contracts into a fused multiply-add: the forward gives bit-identical spikes to the
// CPU's. worker/src/lif_kernel.rs is this file's CPU twin (the same loop in Rust, tested against
// lif.rs's fused CPU op); keep the two in step.
//
// Layout: step-major. `x` is [T, m] (every step) or [m] (constant drive: the same current each step);
// spikes and gradients of the spikes are [T, m]. With an affine (`has_affine`: the folded batch norm,
// held constant), the current of neuron i is x * scale[c] + shift[c], c = (i / spatial) % channels.

// Surrogate kinds (lif_kernel.rs SURROGATE_*).
#define SURROGATE_SIGMOID 0
#define SURROGATE_ATAN 1
#define SURROGATE_TRIANGLE 2

struct LifConsts {
    float v_reset;
    float v_threshold;
    float inv_tau;
    int nonzero_reset;
    int decay_input;
};

__device__ __forceinline__ float lif_charge(const LifConsts& c, float v, float x) {
    const float leak = c.nonzero_reset ? __fsub_rn(v, c.v_reset) : v;
    if (c.decay_input) {
        return __fadd_rn(v, __fadd_rn(__fmul_rn(__fsub_rn(x, leak), c.inv_tau), 0.0f));
    }
    return __fadd_rn(__fsub_rn(v, __fadd_rn(__fmul_rn(leak, c.inv_tau), 0.0f)), x);
}

// The current of neuron i at step t (after the affine, when there is one).
__device__ __forceinline__ float lif_current(const float* x, unsigned long long i, unsigned long long m,
                                             unsigned int t, int constant_drive, int has_affine,
                                             float a, float b) {
    float xi = constant_drive ? x[i] : x[(unsigned long long)t * m + i];
    if (has_affine) {
        xi = __fadd_rn(__fmul_rn(xi, a), b);
    }
    return xi;
}

// ds/dh at h (lif.rs Surrogate::derivative).
__device__ __forceinline__ float lif_surrogate(int kind, float alpha, float v_threshold, float h) {
    const float u = __fsub_rn(h, v_threshold);
    if (kind == SURROGATE_SIGMOID) {
        const float sg = __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(__fmul_rn(-alpha, u))));
        return __fmul_rn(__fmul_rn(alpha, sg), __fsub_rn(1.0f, sg));
    }
    if (kind == SURROGATE_ATAN) {
        const float z = __fmul_rn(__fmul_rn(1.57079632679489661923f, alpha), u);
        return __fdiv_rn(__fdiv_rn(alpha, 2.0f), __fadd_rn(1.0f, __fmul_rn(z, z)));
    }
    return __fmul_rn(alpha, fmaxf(__fsub_rn(1.0f, __fmul_rn(alpha, fabsf(u))), 0.0f));
}

// Forward: spikes [T, m] (0/1) from the current. Reads each input once, writes each spike once.
extern "C" __global__ void ccsrp_lif_forward(
    const float* __restrict__ x, float* __restrict__ spikes,
    const float* __restrict__ scale, const float* __restrict__ shift,
    unsigned long long m, unsigned int t_steps, int constant_drive, int has_affine,
    unsigned int channels, unsigned long long spatial,
    float v_reset, float v_threshold, float inv_tau, int nonzero_reset, int decay_input) {
    const LifConsts c = {v_reset, v_threshold, inv_tau, nonzero_reset, decay_input};
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < m;
         i += stride) {
        float a = 1.0f, b = 0.0f;
        if (has_affine) {
            const unsigned long long ch = (i / spatial) % channels;
            a = scale[ch];
            b = shift[ch];
        }
        float v = c.v_reset;
        for (unsigned int t = 0; t < t_steps; ++t) {
            const float h = lif_charge(c, v, lif_current(x, i, m, t, constant_drive, has_affine, a, b));
            const bool fired = h >= c.v_threshold;
            spikes[(unsigned long long)t * m + i] = fired ? 1.0f : 0.0f;
            v = fired ? c.v_reset : h;
        }
    }
}

// Backward: the gradient of the current ([T, m], or [m] for a constant drive) from the gradient of
// the spikes [T, m]. The potentials h_t are recomputed forward from x into the scratch `hs` [T, m]
// (the same operations as the forward, so the same spikes), then one reverse loop applies
//   dL/dh = dL/ds * k(h) + dL/dv * ((1 - s) + (v_reset - h) * k(h))
//   dL/dx = dL/dh * dh_dx      (summed over t in reverse order for a constant drive)
//   dL/dv_prev = dL/dh * dv_dvprev
// and finally scales dL/dx by the affine's scale (the affine is a constant).
extern "C" __global__ void ccsrp_lif_backward(
    const float* __restrict__ x, const float* __restrict__ grad_s, float* __restrict__ grad_x,
    float* __restrict__ hs, const float* __restrict__ scale, const float* __restrict__ shift,
    unsigned long long m, unsigned int t_steps, int constant_drive, int has_affine,
    unsigned int channels, unsigned long long spatial,
    float v_reset, float v_threshold, float inv_tau, int nonzero_reset, int decay_input,
    int surrogate, float alpha, float dh_dx, float dv_dvprev) {
    const LifConsts c = {v_reset, v_threshold, inv_tau, nonzero_reset, decay_input};
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < m;
         i += stride) {
        float a = 1.0f, b = 0.0f;
        if (has_affine) {
            const unsigned long long ch = (i / spatial) % channels;
            a = scale[ch];
            b = shift[ch];
        }
        float v = c.v_reset;
        for (unsigned int t = 0; t < t_steps; ++t) {
            const float h = lif_charge(c, v, lif_current(x, i, m, t, constant_drive, has_affine, a, b));
            hs[(unsigned long long)t * m + i] = h;
            v = h >= c.v_threshold ? c.v_reset : h;
        }
        float gv = 0.0f;
        float gx_sum = 0.0f;
        for (unsigned int r = t_steps; r > 0; --r) {
            const unsigned int t = r - 1;
            const unsigned long long at = (unsigned long long)t * m + i;
            const float h = hs[at];
            const float gs = grad_s[at];
            const float kh = lif_surrogate(surrogate, alpha, c.v_threshold, h);
            const float s = h >= c.v_threshold ? 1.0f : 0.0f;
            const float through_v =
                __fadd_rn(__fsub_rn(1.0f, s), __fmul_rn(__fsub_rn(c.v_reset, h), kh));
            const float gh = __fadd_rn(__fmul_rn(gs, kh), __fmul_rn(gv, through_v));
            if (constant_drive) {
                gx_sum = __fadd_rn(gx_sum, __fmul_rn(gh, dh_dx));
            } else {
                float g = __fadd_rn(0.0f, __fmul_rn(gh, dh_dx));
                if (has_affine) {
                    g = __fmul_rn(g, a);
                }
                grad_x[at] = g;
            }
            gv = __fmul_rn(gh, dv_dvprev);
        }
        if (constant_drive) {
            grad_x[i] = has_affine ? __fmul_rn(gx_sum, a) : gx_sum;
        }
    }
}
