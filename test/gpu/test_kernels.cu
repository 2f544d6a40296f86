/*
 * test_kernels.cu: each CUDA kernel of the backend against a plain host
 * reference in double precision, on random data (never zeros), on the GPU
 * machine.  Build and run through test/gpu/run.sh.
 *
 *   moe:       MXFP4 re-layout + routing + gather + gate_up/SwiGLU + down,
 *              odd shapes (padding of rows and columns) and 20b shapes, every
 *              variant (tiles_per_pass 1/2/4 x row_tiles 1/2/4 and each
 *              prefill kernel, GPTOSS_MOE_PREFILL's choices, must agree bit
 *              for bit)
 *   attention: paged cache with shuffled pages, GQA, sinks, sliding window,
 *              decode rows and multi-token prefill items
 *   router:    residual + norm, fp32 logits, top-k and softmax, exact and
 *              near ties; the cluster and one-block forms agree bit for bit
 *   rope_kv:   q/k/v bias, RoPE, KV append into shuffled pages, padding row
 *   attention_rope: decode attention doing its own bias + RoPE + KV append
 *              vs rope_kv then attention: output and cache bit for bit
 *   embed_norm, moe_combine_norm: the row kernels (residual stream + norm),
 *              page-table updates, padding tokens, a token alone vs batched
 *   gather_rows: the logits rows, 16-byte and element copies
 *   dense:     dense_gemm (cuBLASLt, bf16 in, fp32 out) at decode and prefill T,
 *              each row bit for bit as in a 1-row call
 *   sample:    greedy and temperature/top-k/top-p against gptoss_sample on
 *              the same logits, plus ties and NaN
 * Output poisoned before each run; relative error = ||gpu - ref|| / ||ref||.
 * Prints one line per check and exits 1 if any fails.
 */
#include <algorithm>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

#include "kernels.cuh"
#include "dense.cuh"

static int	n_fail = 0;
static void *dense_ws;		/* [DENSE_WORKSPACE_BYTES] for dense_gemm */
static bool moe_wgmma_runs;	/* the device runs the wgmma prefill kernel (moe_wgmma_available) */

#define CK(call) \
	do { \
		cudaError_t rc_ = (call); \
		if (rc_ != cudaSuccess) \
		{ \
			fprintf(stderr, "FAIL %s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(rc_)); \
			exit(1); \
		} \
	} while (0)

/* Deterministic random numbers. */
struct Rng
{
	uint64_t	s;
	uint64_t next() { return gptoss_mix64(s++); }
	double uniform() { return (double) (next() >> 11) * (1.0 / 9007199254740992.0); }
	double normal()
	{
		double		u1 = uniform() + 1e-12, u2 = uniform();

		return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
	}
};

/* A random permutation of 0 .. n-1 (Fisher-Yates). */
static std::vector<int32_t>
random_permutation(Rng &rng, int n)
{
	std::vector<int32_t> perm(n);

	for (int i = 0; i < n; i++)
		perm[i] = i;
	for (int i = n - 1; i > 0; i--)
	{
		int			j = (int) (rng.next() % (i + 1));
		int32_t		t = perm[i];

		perm[i] = perm[j], perm[j] = t;
	}
	return perm;
}

/* Records a check's outcome. */
static void
check(bool ok, const char *what, double value, double limit)
{
	printf("%s %-58s %.3e (limit %.1e)\n", ok ? "ok  " : "FAIL", what, value, limit);
	if (!ok)
		n_fail++;
}

template <typename T>
static T *
to_device(const std::vector<T> &v)
{
	T		   *d;

	CK(cudaMalloc(&d, v.size() * sizeof(T) + 16));
	CK(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
	return d;
}

template <typename T>
static std::vector<T>
to_host(const T *d, size_t n)
{
	std::vector<T> v(n);

	CK(cudaMemcpy(v.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
	return v;
}

/* A step's token and attention-item arrays on the device (the fields the attention and RoPE kernels read). */
static StepView
item_step_view(const std::vector<int32_t> &tok_pos, const std::vector<int32_t> &tok_slot,
			   const std::vector<int32_t> &item_tok0, const std::vector<int32_t> &item_ntok)
{
	StepView	sv = {};

	sv.tok_pos = to_device(tok_pos), sv.tok_slot = to_device(tok_slot);
	sv.item_tok0 = to_device(item_tok0), sv.item_ntok = to_device(item_ntok);
	return sv;
}

/* A KV cache view of one layer stack: k and v already on the device, the page table copied there. */
static KvCacheView
kv_cache_view(__nv_bfloat16 *k, __nv_bfloat16 *v, const std::vector<int32_t> &table, int n_pages,
			  int max_pages, int Hkv, int D)
{
	KvCacheView kv = {};

	kv.k = k, kv.v = v, kv.page_table = to_device(table);
	kv.n_pages = n_pages, kv.max_pages = max_pages, kv.n_kv_heads = Hkv, kv.head_dim = D;
	return kv;
}

static const double FP4[16] = {0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6};

/* Decodes row r of expert e of a [E][rows][cols/32][16] MXFP4 matrix into out[cols]. */
static void
mx_row(const std::vector<uint8_t> &blk, const std::vector<uint8_t> &sc, int rows, int cols, int e,
	   int r, double *out)
{
	size_t		row = (size_t) e * rows + r;

	for (int b = 0; b < cols / 32; b++)
	{
		double		scale = ldexp(1.0, (int) sc[row * (cols / 32) + b] - 127);
		const uint8_t *p = &blk[(row * (cols / 32) + b) * 16];

		for (int j = 0; j < 16; j++)
		{
			out[b * 32 + 2 * j] = FP4[p[j] & 15] * scale;
			out[b * 32 + 2 * j + 1] = FP4[p[j] >> 4] * scale;
		}
	}
}

/* One MoE configuration: GPU pipeline vs double reference. */
static void
test_moe(int E, int H, int I, int K, int T, int hot, uint64_t seed)
{
	Rng			rng = {seed};
	int			nb1 = H / 32, nb2 = I / 32;
	std::vector<uint8_t> b1((size_t) E * 2 * I * nb1 * 16), s1((size_t) E * 2 * I * nb1);
	std::vector<uint8_t> b2((size_t) E * H * nb2 * 16), s2((size_t) E * H * nb2);
	std::vector<float> bias1((size_t) E * 2 * I), bias2((size_t) E * H), x((size_t) T * H);
	std::vector<int32_t> topk((size_t) T * K);
	char		name[128];

	for (auto &v : b1) v = (uint8_t) rng.next();
	for (auto &v : b2) v = (uint8_t) rng.next();
	/* scales near 1 / (sqrt(fan_in) * rms(fp4)), with spread, so activations stay O(1) */
	for (auto &v : s1) v = (uint8_t) (127 - (int) log2(sqrt((double) H) * 3) + (int) (rng.next() % 5) - 2);
	for (auto &v : s2) v = (uint8_t) (127 - (int) log2(sqrt((double) I) * 3) + (int) (rng.next() % 5) - 2);
	for (auto &v : bias1) v = (float) (0.1 * rng.normal());
	for (auto &v : bias2) v = (float) (0.1 * rng.normal());
	for (auto &v : x) v = (float) rng.normal();
	for (int t = 0; t < T; t++)
		for (int k = 0; k < K; k++)
		{
			int			e;
			bool		dup;

			do
			{
				/* the first token(s) pile onto expert 0 to exceed one 8-token tile */
				e = (k == 0 && t < hot) ? 0 : (int) (rng.next() % E);
				dup = false;
				for (int j = 0; j < k; j++)
					dup |= topk[(size_t) t * K + j] == e;
			} while (dup);
			topk[(size_t) t * K + k] = e;
		}

	/* device: relayout */
	MoeMatrix	gu = {}, dn = {};
	int			kc_h = div_up(H, 64), kc_i = div_up(I, 64);
	uint8_t    *d_b1 = to_device(b1), *d_s1 = to_device(s1), *d_b2 = to_device(b2), *d_s2 = to_device(s2);
	uint4	   *o_b;
	uint32_t   *o_s;
	float	   *o_t;

	gu.rows = 2 * I, gu.cols = H, gu.rtiles = div_up(I, 8), gu.kc = kc_h;
	dn.rows = H, dn.cols = I, dn.rtiles = div_up(H, 16), dn.kc = kc_i;
	CK(cudaMalloc(&o_b, (size_t) E * gu.rtiles * kc_h * 512));
	CK(cudaMalloc(&o_s, (size_t) E * gu.rtiles * kc_h * 32));
	CK(cudaMalloc(&o_t, (size_t) E * gu.rtiles * 4));
	CK(launch_mxfp4_relayout(d_b1, d_s1, E, 2 * I, H, 1, o_b, o_s, o_t, 0));
	gu.blocks = o_b, gu.scales = o_s, gu.tile_scale = o_t, gu.bias = to_device(bias1);
	CK(cudaMalloc(&o_b, (size_t) E * dn.rtiles * kc_i * 512));
	CK(cudaMalloc(&o_s, (size_t) E * dn.rtiles * kc_i * 32));
	CK(cudaMalloc(&o_t, (size_t) E * dn.rtiles * 4));
	CK(launch_mxfp4_relayout(d_b2, d_s2, E, H, I, 0, o_b, o_s, o_t, 0));
	dn.blocks = o_b, dn.scales = o_s, dn.tile_scale = o_t, dn.bias = to_device(bias2);

	/* routing buffers */
	int			moe_rows = T * K + 8 * E;
	MoeRoute	route;
	__half	   *x_frag, *act_frag;
	float	   *y;
	float	   *d_x = to_device(x);
	int32_t    *d_topk = to_device(topk);

	CK(cudaMalloc(&route.count, E * 4));
	CK(cudaMalloc(&route.offset, E * 4));
	CK(cudaMalloc(&route.active, E * 4));
	CK(cudaMalloc(&route.n_active, 4));
	CK(cudaMalloc(&route.assign_row, (size_t) T * K * 4));
	CK(cudaMalloc(&x_frag, (size_t) moe_rows * kc_h * 128));
	CK(cudaMalloc(&act_frag, (size_t) moe_rows * kc_i * 128));
	CK(cudaMalloc(&y, (size_t) moe_rows * H * 4));
	CK(cudaMemset(x_frag, 0, (size_t) moe_rows * kc_h * 128));
	CK(cudaMemset(act_frag, 0, (size_t) moe_rows * kc_i * 128));

	/* reference for up to 24 assignments: y_(t,k) = W2_e swiglu(W1_e x_t + b1) + b2 */
	std::vector<int> checked;
	std::vector<double> ref;
	std::vector<double> h(2 * I), act(I), wrow(H > I ? H : I), xh(H);

	for (int a = 0; a < T * K; a += (T * K + 23) / 24)
		checked.push_back(a);
	ref.resize(checked.size() * H);
	for (size_t ci = 0; ci < checked.size(); ci++)
	{
		int			t = checked[ci] / K;
		int			e = topk[checked[ci]];

		for (int c = 0; c < H; c++)
			xh[c] = (double) __half2float(__float2half_rn(x[(size_t) t * H + c]));
		for (int r = 0; r < 2 * I; r++)
		{
			double		s = bias1[(size_t) e * 2 * I + r];

			mx_row(b1, s1, 2 * I, H, e, r, wrow.data());
			for (int c = 0; c < H; c++)
				s += wrow[c] * xh[c];
			h[r] = s;
		}
		for (int j = 0; j < I; j++)
		{
			double		g = fmin(h[2 * j], 7.0);
			double		u = fmax(fmin(h[2 * j + 1], 7.0), -7.0);

			act[j] = g / (1.0 + exp(-1.702 * g)) * (u + 1.0);
			act[j] = (double) __half2float(__float2half_rn((float) act[j]));
		}
		for (int r = 0; r < H; r++)
		{
			double		s = bias2[(size_t) e * H + r];

			mx_row(b2, s2, H, I, e, r, wrow.data());
			for (int c = 0; c < I; c++)
				s += wrow[c] * act[c];
			ref[ci * H + r] = s;
		}
	}

	std::vector<float> first;
	/*
	 * {tiles_per_pass, row_tiles}: the decode variants (row tiles 0: the
	 * streaming one), then tiles_per_pass 8 with each prefill kernel
	 */
	const int	n_decode = 10;
	const int	variants[n_decode][2] = {{1, 1}, {1, 0}, {1, 2}, {1, 4}, {2, 1}, {2, 2}, {2, 4}, {4, 1}, {4, 2}, {4, 4}};

	for (int v = 0; v < n_decode + MOE_PREFILL_VARIANTS; v++)
	{
		int			tpp = v < n_decode ? variants[v][0] : 8;
		int			rt = v < n_decode ? variants[v][1] : 1;
		MoePrefill	pf = v < n_decode ? MOE_PREFILL_MMA : (MoePrefill) (v - n_decode);
		bool		tiles = moe_tile_layout(tpp, pf);
		int			max_active = T * K < E ? T * K : E;

		if (pf == MOE_PREFILL_WGMMA && !moe_wgmma_runs)
			continue;
		CK(cudaMemset(y, 0xFF, (size_t) moe_rows * H * 4));	/* poison: NaN */
		/*
		 * and the activations, so that a layout mix-up cannot read what an
		 * earlier variant wrote: with finite halfs (0x3C3C), since padding
		 * columns only ever hold finite values (moe_route.cu)
		 */
		CK(cudaMemset(x_frag, 0x3C, (size_t) moe_rows * kc_h * 128));
		CK(cudaMemset(act_frag, 0x3C, (size_t) moe_rows * kc_i * 128));
		CK(launch_moe_route(T, K, E, d_topk, route, 0));
		CK(launch_moe_gather(T, K, d_x, H, kc_h, route, tiles, x_frag, 0));
		CK(launch_moe_gate_up(max_active, tpp, rt, pf, gu, route, x_frag, 7.0f, act_frag, kc_i, 0));
		CK(launch_moe_down(max_active, tpp, rt, pf, dn, route, act_frag, y, 0));
		CK(cudaDeviceSynchronize());

		std::vector<float> yh = to_host(y, (size_t) moe_rows * H);
		std::vector<int32_t> rows = to_host(route.assign_row, (size_t) T * K);
		std::vector<float> got((size_t) T * K * H);
		double		worst = 0;

		for (int a = 0; a < T * K; a++)
			for (int r = 0; r < H; r++)
				got[(size_t) a * H + r] = yh[(size_t) rows[a] * H + r];
		for (size_t ci = 0; ci < checked.size(); ci++)
		{
			double		num = 0, den = 0;

			for (int r = 0; r < H; r++)
			{
				double		d = got[(size_t) checked[ci] * H + r] - ref[ci * H + r];

				num += d * d;
				den += ref[ci * H + r] * ref[ci * H + r];
			}
			num = sqrt(num / den);
			if (!(num <= worst))
				worst = num != num ? INFINITY : fmax(worst, num);
		}
		snprintf(name, sizeof(name), "moe E=%d H=%d I=%d K=%d T=%d tiles/pass=%d row tiles=%d%s%s: max row rel err",
				 E, H, I, K, T, tpp, rt, tpp == 8 ? " " : "", tpp == 8 ? moe_prefill_names[pf] : "");
		check(worst <= 4e-3, name, worst, 4e-3);
		if (v == 0)
			first = got;
		else
		{
			/* the prefill kernels sum the same input ranges in the same order */
			snprintf(name, sizeof(name), "moe tiles/pass=%d row tiles=%d%s%s identical to 1/1", tpp, rt,
					 tpp == 8 ? " " : "", tpp == 8 ? moe_prefill_names[pf] : "");
			check(memcmp(first.data(), got.data(), got.size() * 4) == 0, name, 0, 0);
		}
	}
	cudaFree(x_frag), cudaFree(act_frag), cudaFree(y), cudaFree(d_x), cudaFree(d_topk);
	cudaFree(d_b1), cudaFree(d_s1), cudaFree(d_b2), cudaFree(d_s2);
}

/*
 * The scale fold of the relayout (moe_layout.cuh, Scales): per row tile,
 * tile_scale is 2^(s_max - 127 - MOE_X_MAX) over the nonzero blocks; every
 * nonzero block within 24 binades of s_max gets a multiplier field f with
 * 2^(f - 29) * tile_scale == 2^(s - 127) exactly (the fragment value times
 * tile_scale is then the checkpoint's value), every one further below is
 * flushed (f = 0), and a zero block never sets s_max.  Scales spread over
 * 30 binades per tile, some zero blocks with scale 250.
 */
static void
test_mx_scale_fold(int E, int rows, int cols, int gate_up, uint64_t seed)
{
	Rng			rng = {seed};
	int			nb = cols / 32;
	int			rtiles = moe_row_tiles(rows, gate_up);
	int			kc = div_up(cols, 64);
	std::vector<uint8_t> blk((size_t) E * rows * nb * 16), sc((size_t) E * rows * nb);
	int			exact = 0, flushed = 0, bad = 0, bad_tile = 0;
	char		name[128];

	for (auto &v : blk) v = (uint8_t) rng.next();
	for (int e = 0; e < E; e++)
		for (int r = 0; r < rows; r++)
		{
			int			tile = gate_up ? (r / 2) / 8 : r / 16;
			int			base = 110 + (int) ((tile * 7 + e * 3) % 20);

			for (int b = 0; b < nb; b++)
			{
				size_t		i = ((size_t) e * rows + r) * nb + b;

				sc[i] = (uint8_t) (base - (int) (rng.next() % 30));
				if (rng.next() % 16 == 0)
				{
					for (int j = 0; j < 16; j++)	/* a zero block (+-0 codes) with a huge scale */
						blk[i * 16 + j] = (uint8_t) ((rng.next() & 1) ? 0x88 : 0x00);
					sc[i] = 250;
				}
			}
		}

	uint8_t    *d_b = to_device(blk), *d_s = to_device(sc);
	uint4	   *o_b;
	uint32_t   *o_s;
	float	   *o_t;

	CK(cudaMalloc(&o_b, (size_t) E * rtiles * kc * 512));
	CK(cudaMalloc(&o_s, (size_t) E * rtiles * kc * 32));
	CK(cudaMalloc(&o_t, (size_t) E * rtiles * 4));
	CK(launch_mxfp4_relayout(d_b, d_s, E, rows, cols, gate_up, o_b, o_s, o_t, 0));
	CK(cudaDeviceSynchronize());

	std::vector<uint32_t> words = to_host(o_s, (size_t) E * rtiles * kc * 8);
	std::vector<float> ts = to_host(o_t, (size_t) E * rtiles);

	for (int e = 0; e < E; e++)
		for (int tile = 0; tile < rtiles; tile++)
		{
			int			s_max = -1;
			auto		file_row = [&](int rr) {
				if (gate_up)
				{
					int			f = tile * 8 + (rr & 7);

					return f < rows / 2 ? 2 * f + (rr >> 3) : -1;
				}
				return tile * 16 + rr < rows ? tile * 16 + rr : -1;
			};
			auto		nonzero = [&](size_t i) {
				for (int j = 0; j < 16; j++)
					if (blk[i * 16 + j] & 0x77)
						return true;
				return false;
			};

			for (int rr = 0; rr < 16; rr++)
				if (file_row(rr) >= 0)
					for (int b = 0; b < nb; b++)
					{
						size_t		i = ((size_t) e * rows + file_row(rr)) * nb + b;

						if (nonzero(i))
							s_max = std::max(s_max, (int) sc[i]);
					}
			if (ts[(size_t) e * rtiles + tile] != (float) ldexp(1.0, s_max - 127 - MOE_X_MAX))
				bad_tile++;
			for (int chunk = 0; chunk < kc; chunk++)
				for (int g = 0; g < 8; g++)
					for (int k = 0; k < 4; k++)
					{
						int			r = file_row(g + ((k >> 1) ? 8 : 0));
						int			b = chunk * 2 + (k & 1);
						uint32_t	f = (words[(((size_t) e * rtiles + tile) * kc + chunk) * 8 + g] >> (8 * k)) & 255u;
						size_t		i;

						if (r < 0 || b >= nb)
							continue;
						i = ((size_t) e * rows + r) * nb + b;
						if (!nonzero(i))
							bad += f > 30;
						else if (sc[i] < s_max - (MOE_X_MAX - MOE_X_MIN))
							bad += f != 0, flushed++;
						else
							bad += f < 1 || f > 30 ||
								ldexp(1.0, (int) f - 29) * ts[(size_t) e * rtiles + tile] != ldexp(1.0, sc[i] - 127),
								exact++;
					}
		}
	snprintf(name, sizeof(name), "scale fold %s E=%d rows=%d cols=%d: tile scales wrong",
			 gate_up ? "gate_up" : "down", E, rows, cols);
	check(bad_tile == 0, name, bad_tile, 0);
	snprintf(name, sizeof(name), "scale fold: blocks not exact / not flushed (%d exact, %d flushed)", exact, flushed);
	check(bad == 0 && exact > 0 && flushed > 0, name, bad, 0);
	cudaFree(o_b), cudaFree(o_s), cudaFree(o_t), cudaFree(d_b), cudaFree(d_s);
}

/* Attention over a paged cache vs a double reference. */
static void
test_attention(int Hq, int Hkv, int D, int ctx, int n_new, int window, uint64_t seed)
{
	Rng			rng = {seed};
	int			G = Hq / Hkv;
	int			L = 2, layer = 1;
	int			max_pages = div_up(ctx, KV_PAGE);
	int			n_pages = max_pages + 3;
	size_t		page_elems = (size_t) Hkv * KV_PAGE * D;
	std::vector<__nv_bfloat16> kc((size_t) L * n_pages * page_elems), vc(kc.size());
	std::vector<double> kd((size_t) ctx * Hkv * D), vd(kd.size());
	std::vector<int32_t> table(max_pages), perm;
	std::vector<float> q((size_t) n_new * Hq * D), sinks(Hq);
	int			slot = 0;
	char		name[160];

	perm = random_permutation(rng, n_pages);
	for (int p = 0; p < max_pages; p++)
		table[p] = perm[p];
	for (auto &v : kc) v = __float2bfloat16(1000.0f);	/* other layers/pages: would ruin the result */
	for (auto &v : vc) v = __float2bfloat16(1000.0f);
	for (int pos = 0; pos < ctx; pos++)
		for (int g = 0; g < Hkv; g++)
			for (int d = 0; d < D; d++)
			{
				size_t		at = (((size_t) layer * n_pages + table[pos / KV_PAGE]) * Hkv + g) * KV_PAGE * D +
					(size_t) (pos % KV_PAGE) * D + d;
				__nv_bfloat16 kb = __float2bfloat16((float) rng.normal());
				__nv_bfloat16 vb = __float2bfloat16((float) rng.normal());

				kc[at] = kb, vc[at] = vb;
				kd[((size_t) pos * Hkv + g) * D + d] = __bfloat162float(kb);
				vd[((size_t) pos * Hkv + g) * D + d] = __bfloat162float(vb);
			}
	for (auto &v : q) v = (float) (1.5 * rng.normal());
	for (auto &v : sinks) v = (float) rng.normal();

	/* step descriptor: tokens ctx-n_new .. ctx-1 of slot 0, items of per_item tokens */
	int			decode = n_new == 1;
	int			per_item = attention_tokens_per_item(Hq, Hkv, D, decode);
	std::vector<int32_t> tok_pos(n_new), tok_slot(n_new, slot), i0, in;

	for (int t = 0; t < n_new; t++)
		tok_pos[t] = ctx - n_new + t;
	for (int t = 0; t < n_new; t += per_item)
	{
		i0.push_back(t);
		in.push_back(n_new - t < per_item ? n_new - t : per_item);
	}
	StepView	sv = item_step_view(tok_pos, tok_slot, i0, in);
	KvCacheView kv = kv_cache_view(to_device(kc), to_device(vc), table, n_pages, max_pages, Hkv, D);
	__nv_bfloat16 *att;

	CK(cudaMalloc(&att, (size_t) n_new * Hq * D * 2));
	CK(cudaMemset(att, 0xFF, (size_t) n_new * Hq * D * 2));
	CK(attention_prepare());
	CK(launch_attention(sv, (int) i0.size(), decode, layer, window, to_device(q), kv,
						to_device(sinks), Hq, att, 0));
	CK(cudaDeviceSynchronize());
	std::vector<__nv_bfloat16> out = to_host(att, (size_t) n_new * Hq * D);

	double		num = 0, den = 0;

	for (int t = 0; t < n_new; t++)
		for (int h = 0; h < Hq; h++)
		{
			int			p = tok_pos[t], g = h / G;
			int			lo = window > 0 ? (p - window + 1 > 0 ? p - window + 1 : 0) : 0;
			double		m = sinks[h], den_s = 0;
			std::vector<double> s(p + 1), o(D, 0.0);

			for (int j = lo; j <= p; j++)
			{
				double		dot = 0;

				for (int d = 0; d < D; d++)
					dot += (double) q[((size_t) t * Hq + h) * D + d] * kd[((size_t) j * Hkv + g) * D + d];
				s[j] = dot / sqrt((double) D);
				m = fmax(m, s[j]);
			}
			for (int j = lo; j <= p; j++)
				den_s += exp(s[j] - m);
			den_s += exp(sinks[h] - m);
			for (int j = lo; j <= p; j++)
				for (int d = 0; d < D; d++)
					o[d] += exp(s[j] - m) / den_s * vd[((size_t) j * Hkv + g) * D + d];
			for (int d = 0; d < D; d++)
			{
				double		diff = (double) __bfloat162float(out[((size_t) t * Hq + h) * D + d]) - o[d];

				num += diff * diff;
				den += o[d] * o[d];
			}
		}
	num = sqrt(num / den);
	if (num != num)
		num = INFINITY;
	snprintf(name, sizeof(name), "attention Hq=%d Hkv=%d D=%d ctx=%d new=%d window=%d: rel err",
			 Hq, Hkv, D, ctx, n_new, window);
	check(num <= 5e-3, name, num, 5e-3);
}

/* Raw bits of a bf16, for bitwise comparisons. */
static uint16_t
bf16_bits(__nv_bfloat16 v)
{
	uint16_t	u;

	memcpy(&u, &v, sizeof(u));
	return u;
}

/* Norm-wise relative error ||got - ref|| / ||ref|| (infinite if got holds NaN). */
static double
rel_err(const std::vector<double> &got, const std::vector<double> &ref)
{
	double		num = 0, den = 0;

	for (size_t i = 0; i < ref.size(); i++)
	{
		num += (got[i] - ref[i]) * (got[i] - ref[i]);
		den += ref[i] * ref[i];
	}
	num = sqrt(num / den);
	return num != num ? INFINITY : num;
}

/*
 * Bias + RoPE + KV append vs host: two sequences (one crossing a page
 * boundary, in items of up to 4 tokens) and a padding row (an item of no
 * tokens), shuffled pages; q to 1e-6, k to bf16 rounding, v bit for bit,
 * the padding row's q untouched, and no cache element written outside the
 * new tokens' (layer, page, head, offset) rows.
 */
static void
test_rope_kv(int Hq, int Hkv, int D, uint64_t seed)
{
	Rng			rng = {seed};
	const int	L = 2, layer = 1, n_seqs = 2, max_pages = 4;
	const int	half = D / 2;
	const int	n_cols = (Hq + 2 * Hkv) * D;
	const int	n_pages = n_seqs * max_pages + 2;
	/* slot 0: positions 13..21 (pages 0 and 1), slot 1: position 40, then a padding row */
	std::vector<int32_t> tok_pos = {13, 14, 15, 16, 17, 18, 19, 20, 21, 40, 0};
	std::vector<int32_t> tok_slot = {0, 0, 0, 0, 0, 0, 0, 0, 0, 1, -1};
	std::vector<int32_t> item_tok0 = {0, 4, 8, 9, 10}, item_ntok = {4, 4, 1, 1, 0};
	const int	item_tokens = 4;
	const int	T = (int) tok_pos.size();
	const int	n_pos = 41;
	std::vector<float> qkv((size_t) T * n_cols), bias(n_cols);
	std::vector<float2> rope((size_t) n_pos * half);
	std::vector<int32_t> table(n_seqs * max_pages), perm;
	size_t		cache_elems = (size_t) L * n_pages * Hkv * KV_PAGE * D;
	std::vector<__nv_bfloat16> sentinel(cache_elems, __float2bfloat16(1000.0f));
	std::vector<double> q_ref((size_t) T * Hq * D), k_ref, k_got;
	std::vector<char> written(cache_elems, 0);
	int			v_bad = 0, stray = 0, pad_q = 0;
	char		name[128];

	for (auto &v : qkv) v = (float) rng.normal();
	for (auto &v : bias) v = (float) (0.1 * rng.normal());
	for (auto &v : rope) v = make_float2((float) rng.normal(), (float) rng.normal());
	perm = random_permutation(rng, n_pages);
	for (int i = 0; i < n_seqs * max_pages; i++)
		table[i] = perm[i];

	StepView	sv = item_step_view(tok_pos, tok_slot, item_tok0, item_ntok);
	KvCacheView kv = kv_cache_view(to_device(sentinel), to_device(sentinel), table, n_pages, max_pages,
								   Hkv, D);
	float	   *d_q;

	CK(cudaMalloc(&d_q, (size_t) T * Hq * D * 4));
	CK(cudaMemset(d_q, 0xFF, (size_t) T * Hq * D * 4));	/* poison: NaN */
	CK(launch_rope_kv(sv, (int) item_tok0.size(), item_tokens, layer, to_device(qkv),
					  to_device(bias), to_device(rope), Hq, Hkv, D, d_q, kv, 0));
	CK(cudaDeviceSynchronize());
	std::vector<float> q = to_host(d_q, (size_t) T * Hq * D);
	std::vector<__nv_bfloat16> kc = to_host(kv.k, cache_elems), vc = to_host(kv.v, cache_elems);

	for (int t = 0; t < T; t++)
	{
		const float *row = &qkv[(size_t) t * n_cols];
		const float2 *cs = &rope[(size_t) tok_pos[t] * half];
		int			page = tok_slot[t] >= 0 ? table[tok_slot[t] * max_pages + tok_pos[t] / KV_PAGE] : -1;

		if (page < 0)
		{
			/* the padding row: in no item, so nothing written, not even q */
			for (int c = 0; c < Hq * D; c++)
			{
				uint32_t	bits;

				memcpy(&bits, &q[(size_t) t * Hq * D + c], 4);
				pad_q += bits != 0xFFFFFFFFu;
			}
			continue;
		}
		for (int h = 0; h < Hq + Hkv; h++)
			for (int i = 0; i < half; i++)
			{
				int			c0 = h * D + i;
				double		a = (float) (row[c0] + bias[c0]);	/* the kernel adds in fp32 */
				double		b = (float) (row[c0 + half] + bias[c0 + half]);
				double		out_a = a * cs[i].x - b * cs[i].y;
				double		out_b = b * cs[i].x + a * cs[i].y;

				if (h < Hq)
				{
					q_ref[((size_t) t * Hq) * D + c0] = out_a;
					q_ref[((size_t) t * Hq) * D + c0 + half] = out_b;
				}
				else
				{
					size_t		k0 = ((((size_t) layer * n_pages + page) * Hkv + h - Hq) * KV_PAGE +
									  tok_pos[t] % KV_PAGE) * D;

					k_ref.push_back(out_a), k_ref.push_back(out_b);
					k_got.push_back(__bfloat162float(kc[k0 + i]));
					k_got.push_back(__bfloat162float(kc[k0 + i + half]));
					written[k0 + i] = written[k0 + i + half] = 1;
				}
			}
		for (int p = 0; p < Hkv * D; p++)
		{
			int			c = (Hq + Hkv) * D + p;
			size_t		at = ((((size_t) layer * n_pages + page) * Hkv + p / D) * KV_PAGE +
							  tok_pos[t] % KV_PAGE) * D + p % D;

			v_bad += bf16_bits(vc[at]) != bf16_bits(__float2bfloat16_rn(row[c] + bias[c]));
		}
	}
	/* every cache element outside the new rows keeps its sentinel (v rows: same places as k) */
	for (size_t i = 0; i < cache_elems; i++)
	{
		stray += !written[i] && bf16_bits(kc[i]) != bf16_bits(sentinel[i]);
		stray += !written[i] && bf16_bits(vc[i]) != bf16_bits(sentinel[i]);
	}

	/* q of the token rows only (the padding row, last, was checked above) */
	std::vector<double> q_got(q.begin(), q.end() - Hq * D);
	double		qe, ke = rel_err(k_got, k_ref);

	q_ref.resize(q_got.size());
	qe = rel_err(q_got, q_ref);

	snprintf(name, sizeof(name), "rope_kv Hq=%d Hkv=%d D=%d: q rel err", Hq, Hkv, D);
	check(qe <= 1e-6, name, qe, 1e-6);
	snprintf(name, sizeof(name), "rope_kv Hq=%d Hkv=%d D=%d: cached k rel err", Hq, Hkv, D);
	check(ke <= 3e-3, name, ke, 3e-3);
	snprintf(name, sizeof(name), "rope_kv Hq=%d Hkv=%d D=%d: cached v not bf16(qkv + bias)", Hq, Hkv, D);
	check(v_bad == 0, name, v_bad, 0);
	snprintf(name, sizeof(name), "rope_kv Hq=%d Hkv=%d D=%d: cache elements written elsewhere", Hq, Hkv, D);
	check(stray == 0, name, stray, 0);
	snprintf(name, sizeof(name), "rope_kv Hq=%d Hkv=%d D=%d: padding row q values written", Hq, Hkv, D);
	check(pad_q == 0, name, pad_q, 0);
}

/* Bias + RoPE of a pair on the host with rope_pair's roundings (fma(a, C, -(b*S)), fma(b, C, a*S)). */
static float2
host_rope_pair(const float *row, const float *bias, int c0, int half, float2 cs)
{
	volatile float a = row[c0] + bias[c0];
	volatile float b = row[c0 + half] + bias[c0 + half];
	volatile float bs = b * cs.y;	/* volatile: rounded products, never contracted */
	volatile float as = a * cs.y;

	return make_float2(fmaf(a, cs.x, -bs), fmaf(b, cs.x, as));
}

/* Counts the elements of two equally long arrays whose bits differ. */
template <typename T>
static long
bits_differ(const std::vector<T> &a, const std::vector<T> &b)
{
	long		n = 0;

	for (size_t i = 0; i < a.size(); i++)
		n += memcmp(&a[i], &b[i], sizeof(T)) != 0;
	return n;
}

/*
 * Decode attention doing its own bias + RoPE + KV append
 * (launch_attention_rope, what the step runs) vs the two-kernel form
 * (launch_rope_kv over every item, then launch_attention), from the same
 * random q/k/v product and the same random cache: the attention output and
 * the whole K and V caches must be bitwise equal.  The step is laid out as
 * forward() sees it: a 5-token prefill chunk first in row order but its
 * items after the decode items; decode tokens at position 0, the last and
 * first offsets of a page, past a sliding window and over many tiles; a
 * padding row (slot -1) whose item has no tokens, among the decode items.
 * n_many more decode tokens at random positions make the batch large
 * enough that no block splits a query-head group (the small one splits
 * each group over several blocks, which all append the same K/V row).
 * Also, bit for bit against the host (same roundings): q of the two-kernel
 * form, the new K and V rows of the fused one; and no other cache element
 * changed.
 */
static void
test_attention_rope(int Hq, int Hkv, int D, int window, int n_many, uint64_t seed)
{
	Rng			rng = {seed};
	const int	L = 2, layer = 1;
	const int	half = D / 2;
	const int	n_cols = (Hq + 2 * Hkv) * D;
	const int	pre_len = 5, pre_pos = 20;	/* the prefill chunk: positions 20..24 */
	std::vector<int32_t> dec_pos = {0, 15, 16, 33, 200, 1000};
	int			max_pos = 1000;
	int			per_item = attention_tokens_per_item(Hq, Hkv, D, 0);
	char		name[160];

	if (!attention_fuses_rope(Hq, Hkv, D))
	{
		check(false, "attention_rope: shape not fused (the test needs one the decode kernel takes)", 1, 0);
		return;
	}
	for (int i = 0; i < n_many; i++)
		dec_pos.push_back((int) (rng.next() % 300));

	const int	n_dec = (int) dec_pos.size();
	const int	pre_slot = n_dec;	/* slots 0 .. n_dec-1: the decode tokens */
	const int	n_slots = n_dec + 1;
	const int	max_pages = div_up(max_pos + 1, KV_PAGE);
	std::vector<int32_t> tok_pos, tok_slot, item_tok0, item_ntok;

	/* rows: the prefill chunk, the decode tokens, the padding row */
	for (int j = 0; j < pre_len; j++)
		tok_pos.push_back(pre_pos + j), tok_slot.push_back(pre_slot);
	for (int k = 0; k < n_dec; k++)
		tok_pos.push_back(dec_pos[k]), tok_slot.push_back(k);
	tok_pos.push_back(0), tok_slot.push_back(-1);

	const int	T = (int) tok_pos.size();
	const int	pad_row = T - 1;

	/* items: the decode tokens with the padding item in between, then the chunk */
	for (int k = 0; k < n_dec; k++)
	{
		item_tok0.push_back(pre_len + k), item_ntok.push_back(1);
		if (k == n_dec / 2)
			item_tok0.push_back(pad_row), item_ntok.push_back(0);
	}

	const int	n_decode = (int) item_tok0.size();

	for (int j = 0; j < pre_len; j += per_item)
		item_tok0.push_back(j), item_ntok.push_back(pre_len - j < per_item ? pre_len - j : per_item);

	const int	n_items = (int) item_tok0.size();

	/* pages: each slot has those its positions need, shuffled over the pool; -1 past them */
	std::vector<int32_t> table((size_t) n_slots * max_pages, -1), perm;
	int			n_pages = 3;	/* spare pages no slot owns */

	for (int sl = 0; sl < n_slots; sl++)
		n_pages += div_up((sl == pre_slot ? pre_pos + pre_len - 1 : dec_pos[sl]) + 1, KV_PAGE);
	perm = random_permutation(rng, n_pages);
	{
		int			next = 0;

		for (int sl = 0; sl < n_slots; sl++)
			for (int p = 0; p < div_up((sl == pre_slot ? pre_pos + pre_len - 1 : dec_pos[sl]) + 1, KV_PAGE); p++)
				table[(size_t) sl * max_pages + p] = perm[next++];
	}

	/* random inputs: cache everywhere (history, other layer, spare pages), q/k/v, bias, table, sinks */
	size_t		cache_elems = (size_t) L * n_pages * Hkv * KV_PAGE * D;
	std::vector<__nv_bfloat16> normals(4096), k0(cache_elems), v0(cache_elems);
	std::vector<float> qkv((size_t) T * n_cols), bias(n_cols), sinks(Hq);
	std::vector<float2> rope((size_t) (max_pos + 1) * half);

	for (auto &v : normals) v = __float2bfloat16((float) rng.normal());
	for (size_t i = 0; i < cache_elems; i++)
	{
		uint64_t	r = rng.next();

		k0[i] = normals[r & 4095];
		v0[i] = normals[(r >> 12) & 4095];
	}
	for (auto &v : qkv) v = (float) rng.normal();
	for (auto &v : bias) v = (float) (0.1 * rng.normal());
	for (auto &v : rope)
	{
		double		angle = 6.283185307179586 * rng.uniform();
		double		conc = 1.0 + 0.2 * rng.uniform();

		v = make_float2((float) (conc * cos(angle)), (float) (conc * sin(angle)));
	}
	for (auto &v : sinks) v = (float) rng.normal();

	StepView	sv = item_step_view(tok_pos, tok_slot, item_tok0, item_ntok);
	StepView	sv_prefill = sv;
	KvCacheView kv_two = kv_cache_view(to_device(k0), to_device(v0), table, n_pages, max_pages, Hkv, D);
	KvCacheView kv_fused = kv_two;
	QkvRope		in;
	float	   *d_q_two, *d_q_fused;
	__nv_bfloat16 *att_two, *att_fused;
	const float *d_sinks = to_device(sinks);
	size_t		q_bytes = (size_t) T * Hq * D * 4, att_bytes = (size_t) T * Hq * D * 2;

	sv_prefill.item_tok0 += n_decode;
	sv_prefill.item_ntok += n_decode;
	kv_fused.k = to_device(k0), kv_fused.v = to_device(v0);
	in.qkv = to_device(qkv), in.bias = to_device(bias), in.table = to_device(rope);
	CK(cudaMalloc(&d_q_two, q_bytes));
	CK(cudaMalloc(&d_q_fused, q_bytes));
	CK(cudaMalloc(&att_two, att_bytes));
	CK(cudaMalloc(&att_fused, att_bytes));
	CK(cudaMemset(d_q_two, 0xFF, q_bytes));	/* poison: NaN */
	CK(cudaMemset(d_q_fused, 0xFF, q_bytes));
	CK(cudaMemset(att_two, 0xFF, att_bytes));
	CK(cudaMemset(att_fused, 0xFF, att_bytes));
	CK(attention_prepare());

	/* the two-kernel form */
	CK(launch_rope_kv(sv, n_items, per_item, layer, in.qkv, in.bias, in.table, Hq, Hkv, D, d_q_two,
					  kv_two, 0));
	CK(launch_attention(sv, n_decode, 1, layer, window, d_q_two, kv_two, d_sinks, Hq, att_two, 0));
	CK(launch_attention(sv_prefill, n_items - n_decode, 0, layer, window, d_q_two, kv_two, d_sinks, Hq,
						att_two, 0));
	/* the fused form, as forward() runs it */
	CK(launch_rope_kv(sv_prefill, n_items - n_decode, per_item, layer, in.qkv, in.bias, in.table,
					  Hq, Hkv, D, d_q_fused, kv_fused, 0));
	CK(launch_attention_rope(sv, n_decode, layer, window, in, kv_fused, d_sinks, Hq, att_fused, 0));
	CK(launch_attention(sv_prefill, n_items - n_decode, 0, layer, window, d_q_fused, kv_fused, d_sinks,
						Hq, att_fused, 0));
	CK(cudaDeviceSynchronize());

	std::vector<__nv_bfloat16> a_two = to_host(att_two, (size_t) T * Hq * D);
	std::vector<__nv_bfloat16> a_fused = to_host(att_fused, (size_t) T * Hq * D);
	std::vector<__nv_bfloat16> kt = to_host(kv_two.k, cache_elems), vt = to_host(kv_two.v, cache_elems);
	std::vector<__nv_bfloat16> kf = to_host(kv_fused.k, cache_elems), vf = to_host(kv_fused.v, cache_elems);
	std::vector<float> q_two = to_host(d_q_two, (size_t) T * Hq * D);
	std::vector<char> written(cache_elems, 0);
	long		q_bad = 0, k_bad = 0, v_bad = 0, stray = 0, att_unset = 0;

	/* the new rows against the host, bit for bit */
	for (int t = 0; t < T; t++)
	{
		const float *row = &qkv[(size_t) t * n_cols];
		const float2 *cs = &rope[(size_t) tok_pos[t] * half];

		if (tok_slot[t] < 0)
			continue;
		for (int h = 0; h < Hq; h++)
			for (int i = 0; i < half; i++)
			{
				float2		r = host_rope_pair(row, bias.data(), h * D + i, half, cs[i]);

				q_bad += memcmp(&q_two[((size_t) t * Hq + h) * D + i], &r.x, 4) != 0;
				q_bad += memcmp(&q_two[((size_t) t * Hq + h) * D + i + half], &r.y, 4) != 0;
			}
		for (int g = 0; g < Hkv; g++)
		{
			int			page = table[(size_t) tok_slot[t] * max_pages + tok_pos[t] / KV_PAGE];
			size_t		at = ((((size_t) layer * n_pages + page) * Hkv + g) * KV_PAGE +
							  tok_pos[t] % KV_PAGE) * D;

			for (int i = 0; i < half; i++)
			{
				float2		r = host_rope_pair(row, bias.data(), (Hq + g) * D + i, half, cs[i]);

				k_bad += bf16_bits(kf[at + i]) != bf16_bits(__float2bfloat16_rn(r.x));
				k_bad += bf16_bits(kf[at + i + half]) != bf16_bits(__float2bfloat16_rn(r.y));
			}
			for (int d = 0; d < D; d++)
			{
				int			c = (Hq + Hkv + g) * D + d;

				v_bad += bf16_bits(vf[at + d]) != bf16_bits(__float2bfloat16_rn(row[c] + bias[c]));
				written[at + d] = 1;
			}
		}
	}
	for (size_t i = 0; i < cache_elems; i++)
		stray += !written[i] && (bf16_bits(kf[i]) != bf16_bits(k0[i]) || bf16_bits(vf[i]) != bf16_bits(v0[i]));
	/* every token row's output was written (the poison is a NaN no result has) */
	for (int t = 0; t < T; t++)
		for (int c = 0; c < Hq * D && t != pad_row; c++)
			att_unset += bf16_bits(a_fused[(size_t) t * Hq * D + c]) == 0xFFFF;

	/* each check: bad element count, must be 0 */
	const struct
	{
		const char *what;
		long		bad;
	}			checks[] = {
		{"output bits differ", bits_differ(a_two, a_fused)},
		{"K cache bits differ", bits_differ(kt, kf)},
		{"V cache bits differ", bits_differ(vt, vf)},
		{"two-kernel q bits not host rope", q_bad},
		{"new K rows not host rope (bits)", k_bad},
		{"new V rows not bf16(qkv + bias)", v_bad},
		{"other cache elements changed", stray},
		{"output elements never written", att_unset},
	};

	for (const auto &ck : checks)
	{
		snprintf(name, sizeof(name), "attention_rope Hq=%d Hkv=%d D=%d w=%d +%d: %s", Hq, Hkv, D,
				 window, n_many, ck.what);
		check(ck.bad == 0, name, (double) ck.bad, 0);
	}
	cudaFree(d_q_two), cudaFree(d_q_fused), cudaFree(att_two), cudaFree(att_fused);
	cudaFree(kv_two.k), cudaFree(kv_two.v), cudaFree(kv_fused.k), cudaFree(kv_fused.v);
}

/*
 * Host RMSNorm reference of one row: norm_w * x / sqrt(mean(x^2) + eps),
 * appended to out.
 */
static void
rmsnorm_ref(const double *x, const std::vector<float> &nw, int H, double eps, std::vector<double> &out)
{
	double		ss = 0;

	for (int i = 0; i < H; i++)
		ss += x[i] * x[i];
	for (int i = 0; i < H; i++)
		out.push_back(nw[i] * (x[i] / sqrt(ss / H + eps)));
}

/*
 * Embedding + first norm vs host: x is the bf16 row exactly, xb its norm to
 * bf16 rounding; block 0's page-table updates land at their indices and
 * nowhere else (more updates than threads in a block).
 */
static void
test_embed_norm(int T, int H, uint64_t seed)
{
	Rng			rng = {seed};
	const int	V = 50, n_table = 4096, n_upd = 700;
	const float eps = 1e-5f;
	std::vector<__nv_bfloat16> emb((size_t) V * H);
	std::vector<float> nw(H);
	std::vector<int32_t> tok(T), table(n_table), upd_index, upd_page, perm(n_table);
	std::vector<double> xb_ref, xb_got;
	int			x_bad = 0, table_bad = 0;
	char		name[128];

	for (auto &v : emb) v = __float2bfloat16((float) rng.normal());
	for (auto &v : nw) v = (float) (1.0 + 0.1 * rng.normal());
	for (auto &v : tok) v = (int32_t) (rng.next() % V);
	tok[T - 1] = tok[0];		/* a repeated token */
	for (int i = 0; i < n_table; i++)
		table[i] = -7, perm[i] = i;
	for (int i = 0; i < n_upd; i++)
	{
		int			j = i + (int) (rng.next() % (n_table - i));
		int			t = perm[i];

		perm[i] = perm[j], perm[j] = t;
		upd_index.push_back(perm[i]);
		upd_page.push_back((int32_t) (rng.next() % 100000));
	}

	StepView	sv = {};
	std::vector<int32_t> n_upd_v = {n_upd};
	float	   *d_x;
	__nv_bfloat16 *d_xb;
	int32_t    *d_table = to_device(table);

	sv.tok_id = to_device(tok);
	sv.n_upd = to_device(n_upd_v), sv.upd_index = to_device(upd_index), sv.upd_page = to_device(upd_page);
	CK(cudaMalloc(&d_x, (size_t) T * H * 4));
	CK(cudaMalloc(&d_xb, (size_t) T * H * 2));
	CK(cudaMemset(d_x, 0xFF, (size_t) T * H * 4));
	CK(cudaMemset(d_xb, 0xFF, (size_t) T * H * 2));
	CK(launch_embed_norm(sv, T, to_device(emb), to_device(nw), H, eps, d_x, d_xb, d_table, 0));
	CK(cudaDeviceSynchronize());
	std::vector<float> x = to_host(d_x, (size_t) T * H);
	std::vector<__nv_bfloat16> xb = to_host(d_xb, (size_t) T * H);
	std::vector<int32_t> got_table = to_host(d_table, n_table);

	for (int t = 0; t < T; t++)
	{
		std::vector<double> row(H);

		for (int i = 0; i < H; i++)
		{
			row[i] = __bfloat162float(emb[(size_t) tok[t] * H + i]);
			x_bad += x[(size_t) t * H + i] != (float) row[i];
			xb_got.push_back(__bfloat162float(xb[(size_t) t * H + i]));
		}
		rmsnorm_ref(row.data(), nw, H, eps, xb_ref);
	}
	for (int i = 0; i < n_upd; i++)
		table[upd_index[i]] = upd_page[i];
	for (int i = 0; i < n_table; i++)
		table_bad += got_table[i] != table[i];

	double		e = rel_err(xb_got, xb_ref);

	snprintf(name, sizeof(name), "embed_norm T=%d H=%d: x differs from the embedding row", T, H);
	check(x_bad == 0, name, x_bad, 0);
	snprintf(name, sizeof(name), "embed_norm T=%d H=%d: xb rel err", T, H);
	check(e <= 3e-3, name, e, 3e-3);
	snprintf(name, sizeof(name), "embed_norm: wrong page-table entries (%d updates)", n_upd);
	check(table_bad == 0, name, table_bad, 0);
}

/*
 * MoE combine + norm vs host: x += sum_k w_k y[row(t,k)] to 1e-6, xb to
 * bf16 rounding; a padding token (rows -1) keeps x bit for bit; a token
 * launched alone gives the same bits as in the batch.
 */
static void
test_moe_combine_norm(int T, int K, int H, uint64_t seed)
{
	Rng			rng = {seed};
	const int	n_rows = T * K + 8;
	const float eps = 1e-5f;
	std::vector<float> x((size_t) T * H), y((size_t) n_rows * H), w((size_t) T * K), nw(H);
	std::vector<int32_t> rows((size_t) T * K), perm;
	std::vector<double> x_ref, x_got, xb_ref, xb_got;
	int			pad_bad = 0, alone_bad = 0;
	int			pad = T / 2;
	char		name[128];

	for (auto &v : x) v = (float) rng.normal();
	for (auto &v : y) v = (float) rng.normal();
	for (auto &v : w) v = (float) rng.uniform();
	for (auto &v : nw) v = (float) (1.0 + 0.1 * rng.normal());
	perm = random_permutation(rng, n_rows);
	for (int a = 0; a < T * K; a++)
		rows[a] = a / K == pad ? -1 : perm[a];

	MoeRoute	route = {};
	float	   *d_x = to_device(x), *d_y = to_device(y), *d_w = to_device(w), *d_nw = to_device(nw);
	__nv_bfloat16 *d_xb;

	route.assign_row = to_device(rows);
	CK(cudaMalloc(&d_xb, (size_t) T * H * 2));
	CK(cudaMemset(d_xb, 0xFF, (size_t) T * H * 2));
	CK(launch_moe_combine_norm(T, K, d_x, d_y, route, d_w, d_nw, H, eps, d_xb, 0));
	CK(cudaDeviceSynchronize());
	std::vector<float> gx = to_host(d_x, (size_t) T * H);
	std::vector<__nv_bfloat16> gxb = to_host(d_xb, (size_t) T * H);

	for (int t = 0; t < T; t++)
	{
		std::vector<double> v(H);

		for (int i = 0; i < H; i++)
		{
			double		s = 0;

			for (int k = 0; k < K; k++)
				if (rows[(size_t) t * K + k] >= 0)
					s += (double) w[(size_t) t * K + k] * y[(size_t) rows[(size_t) t * K + k] * H + i];
			v[i] = x[(size_t) t * H + i] + s;
			x_ref.push_back(v[i]);
			x_got.push_back(gx[(size_t) t * H + i]);
			xb_got.push_back(__bfloat162float(gxb[(size_t) t * H + i]));
			if (t == pad)
				pad_bad += gx[(size_t) t * H + i] != x[(size_t) t * H + i];
		}
		rmsnorm_ref(v.data(), nw, H, eps, xb_ref);
	}

	/* the last token alone (T = 1, its own x restored): same bits as in the batch */
	int			t = T - 1;
	float	   *d_x1 = to_device(std::vector<float>(x.begin() + (size_t) t * H, x.begin() + (size_t) (t + 1) * H));
	__nv_bfloat16 *d_xb1;

	route.assign_row = to_device(std::vector<int32_t>(rows.begin() + (size_t) t * K, rows.begin() + (size_t) (t + 1) * K));
	CK(cudaMalloc(&d_xb1, (size_t) H * 2));
	CK(launch_moe_combine_norm(1, K, d_x1, d_y, route, d_w + (size_t) t * K, d_nw, H, eps, d_xb1, 0));
	CK(cudaDeviceSynchronize());
	std::vector<float> gx1 = to_host(d_x1, H);
	std::vector<__nv_bfloat16> gxb1 = to_host(d_xb1, H);

	for (int i = 0; i < H; i++)
	{
		alone_bad += memcmp(&gx1[i], &gx[(size_t) t * H + i], 4) != 0;
		alone_bad += bf16_bits(gxb1[i]) != bf16_bits(gxb[(size_t) t * H + i]);
	}

	double		xe = rel_err(x_got, x_ref), be = rel_err(xb_got, xb_ref);

	snprintf(name, sizeof(name), "moe_combine_norm T=%d K=%d H=%d: x rel err", T, K, H);
	check(xe <= 1e-6, name, xe, 1e-6);
	snprintf(name, sizeof(name), "moe_combine_norm T=%d K=%d H=%d: xb rel err", T, K, H);
	check(be <= 3e-3, name, be, 3e-3);
	snprintf(name, sizeof(name), "moe_combine_norm H=%d: padding token's x changed", H);
	check(pad_bad == 0, name, pad_bad, 0);
	snprintf(name, sizeof(name), "moe_combine_norm H=%d: token alone differs from batch (bits)", H);
	check(alone_bad == 0, name, alone_bad, 0);
}

/* gather_rows: out[r] is xb[rows[r]] bit for bit (rows repeat), and nothing past R rows is written. */
static void
test_gather_rows(int T, int R, int H, uint64_t seed)
{
	Rng			rng = {seed};
	std::vector<__nv_bfloat16> xb((size_t) T * H);
	std::vector<int32_t> rows(R);
	int			bad = 0, past = 0;
	__nv_bfloat16 *d_out;
	char		name[128];

	for (auto &v : xb) v = __float2bfloat16((float) rng.normal());
	for (auto &v : rows) v = (int32_t) (rng.next() % T);
	rows[R - 1] = rows[0];
	CK(cudaMalloc(&d_out, (size_t) (R + 1) * H * 2));
	CK(cudaMemset(d_out, 0xFF, (size_t) (R + 1) * H * 2));
	CK(launch_gather_rows(to_device(rows), R, to_device(xb), H, d_out, 0));
	CK(cudaDeviceSynchronize());
	std::vector<__nv_bfloat16> out = to_host(d_out, (size_t) (R + 1) * H);

	for (int r = 0; r < R; r++)
		for (int i = 0; i < H; i++)
			bad += bf16_bits(out[(size_t) r * H + i]) != bf16_bits(xb[(size_t) rows[r] * H + i]);
	for (int i = 0; i < H; i++)
		past += bf16_bits(out[(size_t) R * H + i]) != 0xFFFF;
	snprintf(name, sizeof(name), "gather_rows R=%d H=%d: elements differing from xb[rows[r]]", R, H);
	check(bad == 0, name, bad, 0);
	snprintf(name, sizeof(name), "gather_rows R=%d H=%d: elements written past R rows", R, H);
	check(past == 0, name, past, 0);
}

/* Outputs of one norm_router launch, copied back. */
struct RouterOut
{
	std::vector<float> x, xn, w;	/* [T][H] residual, [T][H] normed, [T][K] weights */
	std::vector<int32_t> idx;		/* [T][K] experts */
};

/*
 * Runs launch_norm_router on T rows (rows x, proj and slots slot; the other
 * inputs already on the device), outputs poisoned first; x is copied fresh
 * since the launch updates it in place.
 */
static RouterOut
run_router(int T, int H, int E, int K, const float *x, const float *proj, const int32_t *slot,
		   const float *d_bias, const float *d_nw, const __nv_bfloat16 *d_w, const float *d_b)
{
	StepView	sv = {};
	RouterOut	o;
	float	   *d_x = to_device(std::vector<float>(x, x + (size_t) T * H));
	float	   *d_proj = to_device(std::vector<float>(proj, proj + (size_t) T * H));
	int32_t    *d_slot = to_device(std::vector<int32_t>(slot, slot + T));
	float	   *d_xn, *d_wt;
	int32_t    *d_idx;

	sv.tok_slot = d_slot;
	CK(cudaMalloc(&d_xn, (size_t) T * H * 4));
	CK(cudaMalloc(&d_wt, (size_t) T * K * 4));
	CK(cudaMalloc(&d_idx, (size_t) T * K * 4));
	CK(cudaMemset(d_xn, 0x7F, (size_t) T * H * 4));	/* not -1: that is the padding expert */
	CK(cudaMemset(d_wt, 0x7F, (size_t) T * K * 4));
	CK(cudaMemset(d_idx, 0x7F, (size_t) T * K * 4));
	CK(launch_norm_router(sv, T, d_x, d_proj, d_bias, d_nw, 1e-5f, d_xn, d_w, d_b, H, E, K, d_idx,
						  d_wt, 0));
	CK(cudaDeviceSynchronize());
	o.x = to_host(d_x, (size_t) T * H);
	o.xn = to_host(d_xn, (size_t) T * H);
	o.w = to_host(d_wt, (size_t) T * K);
	o.idx = to_host(d_idx, (size_t) T * K);
	CK(cudaFree(d_x));
	CK(cudaFree(d_proj));
	CK(cudaFree(d_slot));
	CK(cudaFree(d_xn));
	CK(cudaFree(d_wt));
	CK(cudaFree(d_idx));
	return o;
}

#define ROUTER_LOGIT_TOL 1e-5	/* fp32 vs double logits: far below the spacing of random logits */

/*
 * Residual + norm + router top-k vs host, on random rows (the last one
 * padding) with an exactly tied pair of experts (identical rows and biases:
 * the lower one must rank first; on one lane when E > 32) and a near-tied
 * pair (biases one float step apart: either order passes), both pairs
 * boosted to compete for the top K.  A GPU expert passes when its reference
 * logit equals the reference's k-th within ROUTER_LOGIT_TOL.  Then every
 * row alone in a T = 1 step (the cluster form) must give the same bits
 * (x, xn, experts, weights) as in the T-row step, which is the one-block
 * form when T > ROUTER_CLUSTER_MAX_T and the many-rows form from
 * ROUTER_ROWS_MIN_T rows.
 */
static void
test_router(int T, int H, int E, int K, uint64_t seed)
{
	Rng			rng = {seed};
	const int	tie_a = 1, tie_b = E > 32 ? tie_a + 32 : E - 2;
	const int	near_a = 2, near_b = 3;
	const float boost = 1.5f;
	std::vector<float> x((size_t) T * H), proj((size_t) T * H), bias(H), nw(H), b(E);
	std::vector<__nv_bfloat16> w((size_t) E * H);
	std::vector<int32_t> slot(T, 0);
	int			bad = 0, tie_bad = 0, x_bad = 0, pad_bad = 0, form_bad = 0, n_tie = 0, n_near = 0;
	double		werr = 0, nerr = 0, nden = 0;
	const char *form = T <= ROUTER_CLUSTER_MAX_T ? "cluster per row" : T < ROUTER_ROWS_MIN_T ? "one block per row" :
		"many rows a block";
	char		name[160];

	if (E < 6 || K < 2)
	{
		printf("FAIL norm_router: the test needs E >= 6 and K >= 2 (E=%d K=%d)\n", E, K);
		n_fail++;
		return;
	}
	for (auto &v : x) v = (float) rng.normal();
	for (auto &v : proj) v = (float) rng.normal();
	for (auto &v : bias) v = (float) (0.1 * rng.normal());
	for (auto &v : nw) v = (float) (1.0 + 0.1 * rng.normal());
	for (auto &v : w) v = __float2bfloat16((float) (rng.normal() / sqrt((double) H)));
	for (auto &v : b) v = (float) (0.1 * rng.normal());
	for (int i = 0; i < H; i++)
	{
		w[(size_t) tie_b * H + i] = w[(size_t) tie_a * H + i];
		w[(size_t) near_b * H + i] = w[(size_t) near_a * H + i];
	}
	b[tie_a] = b[tie_b] = b[near_a] = boost;
	b[near_b] = nextafterf(boost, 2.0f);
	slot[T - 1] = -1;			/* a padding row */

	float	   *d_bias = to_device(bias), *d_nw = to_device(nw), *d_b = to_device(b);
	__nv_bfloat16 *d_w = to_device(w);
	RouterOut	g = run_router(T, H, E, K, x.data(), proj.data(), slot.data(), d_bias, d_nw, d_w, d_b);

	for (int t = 0; t < T; t++)
	{
		std::vector<double> xn(H), lg(E);
		std::vector<int> sel;
		const int32_t *gi = &g.idx[(size_t) t * K];
		const float *gw = &g.w[(size_t) t * K];
		double		ss = 0, sum = 0;
		int			pa = -1, pb = -1, pn = 0;

		for (int i = 0; i < H; i++)
		{
			float		r = x[(size_t) t * H + i] + (proj[(size_t) t * H + i] + bias[i]);

			x_bad += memcmp(&r, &g.x[(size_t) t * H + i], 4) != 0;
			xn[i] = r;
			ss += xn[i] * xn[i];
		}
		for (int i = 0; i < H; i++)
		{
			xn[i] = nw[i] * (xn[i] / sqrt(ss / H + 1e-5));
			nerr += (g.xn[(size_t) t * H + i] - xn[i]) * (g.xn[(size_t) t * H + i] - xn[i]);
			nden += xn[i] * xn[i];
		}
		if (slot[t] < 0)
		{
			for (int k = 0; k < K; k++)
				pad_bad += gi[k] != -1 || gw[k] != 0.0f;
			continue;
		}
		for (int e = 0; e < E; e++)
		{
			double		s = b[e];

			for (int i = 0; i < H; i++)
				s += xn[i] * __bfloat162float(w[(size_t) e * H + i]);
			lg[e] = s;
		}
		for (int k = 0; k < K; k++)
		{
			int			best = -1;

			for (int e = 0; e < E; e++)
			{
				bool		taken = false;

				for (int j : sel)
					taken |= j == e;
				if (!taken && (best < 0 || lg[e] > lg[best]))
					best = e;
			}
			sel.push_back(best);
		}
		for (int k = 0; k < K; k++)
		{
			bool		repeated = false;

			for (int j = 0; j < k; j++)
				repeated |= gi[j] == gi[k];
			if (gi[k] < 0 || gi[k] >= E || repeated)
			{
				bad++;
				continue;
			}
			bad += fabs(lg[gi[k]] - lg[sel[k]]) > ROUTER_LOGIT_TOL;
			pa = gi[k] == tie_a ? k : pa;
			pb = gi[k] == tie_b ? k : pb;
			pn += gi[k] == near_a || gi[k] == near_b;
			sum += exp(lg[gi[k]] - lg[gi[0]]);
		}
		tie_bad += pb >= 0 && (pa < 0 || pa > pb);
		n_tie += pb >= 0;
		n_near += pn == 2;
		for (int k = 0; k < K; k++)
			if (gi[k] >= 0 && gi[k] < E)
				werr = fmax(werr, fabs(gw[k] - exp(lg[gi[k]] - lg[gi[0]]) / sum));
	}
	for (int t = 0; t < T; t++)
	{
		RouterOut	a = run_router(1, H, E, K, &x[(size_t) t * H], &proj[(size_t) t * H], &slot[t],
								   d_bias, d_nw, d_w, d_b);

		form_bad += memcmp(a.x.data(), &g.x[(size_t) t * H], (size_t) H * 4) != 0 ||
			memcmp(a.xn.data(), &g.xn[(size_t) t * H], (size_t) H * 4) != 0 ||
			memcmp(a.idx.data(), &g.idx[(size_t) t * K], (size_t) K * 4) != 0 ||
			memcmp(a.w.data(), &g.w[(size_t) t * K], (size_t) K * 4) != 0;
	}
	printf("     norm_router T=%d E=%d K=%d: rows with both of the tied pair / the near pair: %d / %d\n",
		   T, E, K, n_tie, n_near);
	snprintf(name, sizeof(name), "norm_router T=%d H=%d: x differing from x + (proj + bias)", T, H);
	check(x_bad == 0, name, x_bad, 0);
	snprintf(name, sizeof(name), "norm_router T=%d H=%d: normed rows rel err", T, H);
	check(sqrt(nerr / nden) <= 1e-6, name, sqrt(nerr / nden), 1e-6);
	snprintf(name, sizeof(name), "norm_router T=%d E=%d K=%d: wrong experts", T, E, K);
	check(bad == 0, name, bad, 0);
	snprintf(name, sizeof(name), "norm_router T=%d E=%d K=%d: exact tie not lower expert first", T, E, K);
	check(tie_bad == 0, name, tie_bad, 0);
	snprintf(name, sizeof(name), "norm_router T=%d E=%d K=%d: padding row not (-1, 0)", T, E, K);
	check(pad_bad == 0, name, pad_bad, 0);
	snprintf(name, sizeof(name), "norm_router T=%d E=%d K=%d: max weight error", T, E, K);
	check(werr <= 1e-5, name, werr, 1e-5);
	snprintf(name, sizeof(name), "norm_router T=%d (%s) vs each row at T=1: rows differing (bits)", T, form);
	check(form_bad == 0, name, form_bad, 0);
	CK(cudaFree(d_bias));
	CK(cudaFree(d_nw));
	CK(cudaFree(d_b));
	CK(cudaFree(d_w));
}

/*
 * dense_gemm vs a double reference, and batch invariance: each checked row of
 * a T-row call equals, bit for bit, the same input alone in a 1-row call.
 */
static void
test_dense(cublasLtHandle_t lt, int N, int K, uint64_t seed)
{
	Rng			rng = {seed};
	const int	T_max = 4 * DENSE_COLS;
	std::vector<__nv_bfloat16> w((size_t) N * K), x((size_t) T_max * K);
	__nv_bfloat16 *d_w, *d_x, *d_x1;
	float	   *d_y, *d_y1;
	DenseProduct p;
	gptoss_error err = {};
	int			Ts[6] = {1, 3, 9, 64, DENSE_COLS + 1, 3 * DENSE_COLS + 5};
	char		name[128];

	for (auto &v : w) v = __float2bfloat16((float) (rng.normal() / sqrt((double) K)));
	for (auto &v : x) v = __float2bfloat16((float) rng.normal());
	d_w = to_device(w);
	d_x = to_device(x);
	CK(cudaMalloc(&d_y, (size_t) T_max * N * 4));
	CK(cudaMalloc(&d_x1, (size_t) DENSE_COLS * K * 2));
	CK(cudaMalloc(&d_y1, (size_t) DENSE_COLS * N * 4));
	if (build_dense_product(lt, N, K, T_max, &p, &err) < 0)
	{
		printf("FAIL build_dense_product: %s\n", err.msg);
		n_fail++;
		return;
	}
	for (int ti = 0; ti < 6; ti++)
	{
		int			T = Ts[ti];
		double		num = 0, den = 0;
		long		differ = 0;

		CK(cudaMemset(d_y, 0xFF, (size_t) T_max * N * 4));
		if (dense_gemm(lt, &p, dense_ws, d_w, d_x, T, d_y, 0, &err, "test") < 0)
		{
			printf("FAIL dense_gemm: %s\n", err.msg);
			n_fail++;
			return;
		}
		CK(cudaDeviceSynchronize());
		std::vector<float> y = to_host(d_y, (size_t) T * N);

		for (int t = 0; t < T; t += (T > 8 ? 7 : 1))
		{
			std::vector<float> y1;

			CK(cudaMemcpy(d_x1, d_x + (size_t) t * K, (size_t) K * 2, cudaMemcpyDeviceToDevice));
			if (dense_gemm(lt, &p, dense_ws, d_w, d_x1, 1, d_y1, 0, &err, "test") < 0)
			{
				printf("FAIL dense_gemm: %s\n", err.msg);
				n_fail++;
				return;
			}
			y1 = to_host(d_y1, (size_t) N);
			differ += memcmp(y1.data(), &y[(size_t) t * N], (size_t) N * 4) != 0;
			for (int n = 0; n < N; n++)
			{
				double		ref = 0;

				for (int k = 0; k < K; k++)
					ref += (double) __bfloat162float(w[(size_t) n * K + k]) * __bfloat162float(x[(size_t) t * K + k]);
				num += (y[(size_t) t * N + n] - ref) * (y[(size_t) t * N + n] - ref);
				den += ref * ref;
			}
		}
		num = sqrt(num / den);
		if (num != num)
			num = INFINITY;
		snprintf(name, sizeof(name), "dense N=%d K=%d T=%d: rel err", N, K, T);
		check(num <= 1e-5, name, num, 1e-5);
		snprintf(name, sizeof(name), "dense N=%d K=%d T=%d vs each row alone: rows differing (bits)", N, K, T);
		check(differ == 0, name, differ, 0);
	}
	cudaFree(d_w), cudaFree(d_x), cudaFree(d_y), cudaFree(d_x1), cudaFree(d_y1);
}

/* GPU sampling vs gptoss_sample on identical logits. */
static void
test_sample(int V, uint64_t seed)
{
	Rng			rng = {seed};
	const int	R = 48;
	std::vector<float> logits((size_t) R * V);
	std::vector<SampleRow> rows(R);
	std::vector<float> scratch(2 * (size_t) V);
	int			agree = 0, greedy_bad = 0, n_greedy = 0;
	char		name[128];

	for (int r = 0; r < R; r++)
	{
		double		sigma = 0.5 + 3.0 * (r % 4);

		for (int i = 0; i < V; i++)
			logits[(size_t) r * V + i] = (float) (sigma * rng.normal());
		rows[r].seed = rng.next();
		rows[r].pos = r * 7;
		rows[r].entry = r;
		switch (r % 6)
		{
			case 0: rows[r].temperature = 0; rows[r].top_p = 1; rows[r].top_k = 0; break;
			case 1: rows[r].temperature = 1; rows[r].top_p = 1; rows[r].top_k = 0; break;
			case 2: rows[r].temperature = 0.7f; rows[r].top_p = 0.9f; rows[r].top_k = 0; break;
			case 3: rows[r].temperature = 1.3f; rows[r].top_p = 1; rows[r].top_k = 40; break;
			case 4: rows[r].temperature = 1; rows[r].top_p = 0.5f; rows[r].top_k = 7; break;
			default: rows[r].temperature = 2; rows[r].top_p = 0.95f; rows[r].top_k = 1; break;
		}
	}
	/* ties and NaN: row 6 all equal (greedy), row 12 equal top values, row 18 NaNs */
	for (int i = 0; i < V; i++)
		logits[(size_t) 6 * V + i] = 1.25f;
	for (int i = 0; i < 50; i++)
		logits[(size_t) 12 * V + (size_t) (rng.next() % V)] = 100.0f;
	for (int i = 0; i < V; i += 3)
		logits[(size_t) 18 * V + i] = NAN;
	/* sampling among exact ties: row 13 (T=1) has 30 tokens at the same top logit */
	for (int i = 0; i < 30; i++)
		logits[(size_t) 13 * V + (size_t) (rng.next() % V)] = 50.0f;

	StepView	sv = {};
	float	   *d_logits = to_device(logits);
	int32_t    *d_out;

	sv.samp = to_device(rows);
	CK(cudaMalloc(&d_out, R * 4));
	CK(cudaMemset(d_out, 0xFF, R * 4));
	CK(launch_sample(sv, R, d_logits, V, d_out, 0));
	CK(cudaDeviceSynchronize());
	std::vector<int32_t> got = to_host(d_out, R);

	for (int r = 0; r < R; r++)
	{
		gptoss_sampling s = {rows[r].temperature, rows[r].top_p, rows[r].top_k, rows[r].seed};
		int			want = gptoss_sample(&logits[(size_t) r * V], V, &s, rows[r].pos, scratch.data());
		bool		greedy = !(s.temperature > 0) || s.top_k == 1;

		agree += want == got[r];
		if (greedy)
		{
			n_greedy++;
			greedy_bad += want != got[r];
		}
		if (want != got[r])
			printf("     sample row %d (T=%g p=%g k=%d): gpu %d cpu %d\n", r, s.temperature, s.top_p,
				   s.top_k, got[r], want);
	}
	snprintf(name, sizeof(name), "sample greedy rows (%d) differing from gptoss_sample", n_greedy);
	check(greedy_bad == 0, name, greedy_bad, 0);
	snprintf(name, sizeof(name), "sample V=%d: rows agreeing with gptoss_sample (of %d)", V, R);
	check(agree >= R - 2, name, agree, R - 2);
}

int
main(void)
{
	int			dev = 0;
	cudaDeviceProp prop;

	CK(cudaGetDeviceProperties(&prop, dev));
	printf("device: %s\n", prop.name);
	CK(moe_wgmma_available(&moe_wgmma_runs));
	/* this build's sm_90a code runs on every compute capability 9.0 device (H100, H200) */
	check(moe_wgmma_runs || prop.major != 9 || prop.minor != 0, "moe wgmma prefill kernel available (sm_90a)",
		  moe_wgmma_runs, 1);
	test_mx_scale_fold(3, 320, 96, 1, 11);	/* gate_up regrouping, a partial last tile */
	test_mx_scale_fold(2, 96, 160, 0, 12);	/* down, odd block count */
	test_moe(6, 96, 160, 2, 5, 0, 1);		/* tiny-odd shapes: odd block counts, padded tiles */
	test_moe(8, 64, 64, 2, 37, 20, 2);		/* tiny shapes, one expert with 20+ tokens */
	test_moe(32, 2880, 2880, 4, 1, 0, 3);	/* 20b, decode */
	test_moe(32, 2880, 2880, 4, 70, 40, 4);	/* 20b, batch: several tiles per expert */
	test_moe(6, 96, 160, 2, 300, 290, 5);	/* tiny-odd, one expert with 290+ tokens: several prefill passes */
	test_moe(32, 2880, 2880, 4, 512, 300, 6);	/* 20b, prefill: one expert with 300+ tokens, partial tiles */
	test_attention(4, 2, 16, 40, 1, 0, 5);
	test_attention(4, 2, 16, 40, 1, 8, 6);
	test_attention(6, 2, 16, 53, 17, 6, 7);
	test_attention(4, 2, 16, 100, 100, 8, 22);	/* the tiny model's prefill: items of FA_ROWS / 2 tokens */
	test_attention(4, 2, 16, 100, 100, 0, 23);
	test_attention(64, 8, 64, 300, 1, 128, 8);
	test_attention(64, 8, 64, 300, 1, 0, 9);
	test_attention(64, 8, 64, 1000, 1, 0, 16);	/* more tiles than warps */
	test_attention(64, 8, 64, 200, 37, 0, 10);
	test_attention(64, 8, 64, 200, 37, 128, 11);
	test_attention(64, 4, 128, 77, 1, 0, 17);	/* D = 128, G = 16: CUDA-core kernel for a decode row */
	test_attention(64, 4, 128, 150, 40, 0, 18);	/* G = 16: CUDA-core prefill kernel */
	test_attention(64, 8, 128, 150, 40, 64, 19);	/* D = 128 on the tensor cores */
	test_attention(64, 8, 64, 700, 300, 0, 20);	/* long chunk, many tiles */
	test_attention(64, 8, 64, 700, 300, 128, 21);
	test_router(ROUTER_CLUSTER_MAX_T, 2880, 32, 4, 12);	/* 20b, cluster form */
	test_router(ROUTER_CLUSTER_MAX_T + 9, 2880, 32, 4, 37);	/* 20b, one-block form (8 items a warp: 6 + 2) vs T = 1 */
	test_router(ROUTER_CLUSTER_MAX_T, 96, 6, 2, 13);	/* tiny-odd shapes */
	test_router(ROUTER_CLUSTER_MAX_T + 3, 96, 6, 2, 38);	/* 24 items: warps with 2 and with 1 */
	test_router(ROUTER_CLUSTER_MAX_T, 2880, 128, 4, 39);	/* 120b: 128 experts, several slices per warp of the cluster */
	test_router(200, 2880, 128, 4, 40);	/* 32 items a warp: ring rounds, the last partial */
	CK(router_prepare());
	test_router(2131, 2880, 32, 4, 41);	/* 20b prefill + decode rows, many rows a block (a short last block) */
	test_router(ROUTER_ROWS_MIN_T + 5, 96, 6, 2, 42);	/* tiny-odd: 24 items, warps with 2 and with 1 */
	test_router(700, 2880, 128, 4, 43);	/* 120b: 32 items a warp in 8 groups */
	test_rope_kv(4, 2, 16, 27);			/* tiny */
	test_rope_kv(6, 2, 16, 28);
	test_rope_kv(64, 8, 64, 29);		/* 20b */
	test_rope_kv(64, 4, 128, 30);
	test_attention_rope(4, 2, 16, 8, 0, 37);		/* tiny, sliding */
	test_attention_rope(6, 2, 16, 0, 0, 38);		/* tiny-odd: G = 3 */
	test_attention_rope(64, 8, 64, 128, 0, 39);		/* 20b sliding layer, groups split over blocks */
	test_attention_rope(64, 8, 64, 0, 0, 40);		/* 20b full layer */
	test_attention_rope(64, 8, 64, 128, 40, 41);	/* 20b, 47 decode items: whole groups per block */
	test_attention_rope(64, 8, 64, 0, 40, 42);
	test_attention_rope(64, 8, 128, 0, 0, 43);		/* D = 128 */
	test_embed_norm(7, 2880, 31);		/* 20b: 6 values per thread, the last partly past H */
	test_embed_norm(3, 96, 32);			/* tiny-odd */
	test_moe_combine_norm(9, 4, 2880, 33);
	test_moe_combine_norm(5, 2, 96, 34);
	test_gather_rows(40, 9, 2880, 35);	/* 16-byte copies */
	test_gather_rows(12, 5, 90, 36);	/* H % 8 != 0: element copies */
	{
		cublasLtHandle_t lt;

		if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS)
		{
			printf("FAIL cublasLtCreate\n");
			return 1;
		}
		CK(cudaMalloc(&dense_ws, DENSE_WORKSPACE_BYTES));
		test_dense(lt, 5120, 2880, 24);		/* 20b q/k/v */
		test_dense(lt, 2880, 4096, 25);		/* 20b o */
		test_dense(lt, 160, 96, 26);		/* tiny-odd q/k/v */
		cublasLtDestroy(lt);
		cudaFree(dense_ws);
	}
	test_sample(201088, 14);
	test_sample(1000, 15);
	printf("%s: %d failed checks\n", n_fail ? "FAILED" : "PASSED", n_fail);
	return n_fail ? 1 : 0;
}
