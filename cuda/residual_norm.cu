/*
 * residual_norm.cu: closes the attention block and opens the MoE block.
 * One block per token row: x += proj + o_bias (the o-projection from cuBLAS
 * comes without its bias), then xn = RMSNorm(x) * post_attention_layernorm
 * in fp32, the input of the router and of the experts.  Same formula as the
 * CPU backend: y = w * (x * (1 / sqrt(mean(x^2) + eps))).
 */
#include "kernels.cuh"

#define NORM_THREADS 256

/* x[t] += proj[t] + bias; xn[t] = norm_w * x[t] / rms(x[t]). */
__global__ void __launch_bounds__(NORM_THREADS)
residual_norm_kernel(float *__restrict__ x, const float *__restrict__ proj,
					 const float *__restrict__ bias, const float *__restrict__ norm_w, int H,
					 float eps, float *__restrict__ xn)
{
	__shared__ float scratch[32];
	size_t		base = (size_t) blockIdx.x * H;
	float		ss = 0.0f;
	float		inv;

	for (int i = threadIdx.x; i < H; i += blockDim.x)
	{
		float		v = x[base + i] + (proj[base + i] + bias[i]);

		x[base + i] = v;
		ss += v * v;
	}
	ss = block_sum(ss, scratch);
	inv = 1.0f / sqrtf(ss / (float) H + eps);
	for (int i = threadIdx.x; i < H; i += blockDim.x)
		xn[base + i] = norm_w[i] * (x[base + i] * inv);
}

/* Launches one block per token row. */
cudaError_t
launch_residual_norm(int T, float *x, const float *proj, const float *bias, const float *norm_w,
					 int H, float eps, float *xn, cudaStream_t stream)
{
	if (T <= 0)
		return cudaSuccess;
	residual_norm_kernel<<<T, NORM_THREADS, 0, stream>>>(x, proj, bias, norm_w, H, eps, xn);
	return cudaGetLastError();
}
