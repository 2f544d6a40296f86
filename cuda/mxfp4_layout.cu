/*
 * mxfp4_layout.cu: converts one layer's expert matrix from the checkpoint's
 * MXFP4 layout ([E][rows][cols/32][16] nibble blocks, [E][rows][cols/32]
 * E8M0 scales) to the tensor-core fragment layout of moe_layout.cuh.
 *
 * Runs once per matrix at upload, on the GPU (the raw bytes are copied to a
 * staging buffer first), so loading 9 GB of experts costs no host time.
 * One thread writes one lane's uint4 of one (expert, row tile, 64-column
 * chunk); lanes with t = 0 also write their row group's scale word.  Same
 * number of bytes as the original plus one float per (expert, row tile): a
 * first kernel finds each row tile's largest nonzero-block scale and writes
 * tile_scale = 2^G (moe_layout.cuh, Scales), which the second turns into
 * the multipliers' exponent fields.
 */
#include "kernels.cuh"

/* File row of row r (0..15) of row tile `tile`, or -1 past the matrix. */
static __device__ __forceinline__ int
file_row(int tile, int r, int rows, int gate_up)
{
	if (gate_up)
	{
		int			f = tile * 8 + (r & 7);

		return f < rows / 2 ? 2 * f + (r >> 3) : -1;
	}
	return tile * 16 + r < rows ? tile * 16 + r : -1;
}

/*
 * One warp per (expert, row tile): tile_scale = 2^G with G = s_max - 127 -
 * MOE_X_MAX, s_max the largest scale of the tile's blocks that hold a
 * nonzero code (1.0 when none does).
 */
__global__ void
mxfp4_tile_scale_kernel(const uint8_t *__restrict__ blocks, const uint8_t *__restrict__ scales,
						int E, int rows, int cols, int gate_up, int rtiles,
						float *__restrict__ tile_scale)
{
	int64_t		warp_id = ((int64_t) blockIdx.x * blockDim.x + threadIdx.x) >> 5;
	int			lane = threadIdx.x & 31;
	int			nb = cols / 32;
	int			tile;
	int			e;
	int			s_max = -1;

	if (warp_id >= (int64_t) E * rtiles)
		return;
	tile = (int) (warp_id % rtiles);
	e = (int) (warp_id / rtiles);
	for (int i = lane; i < 16 * nb; i += 32)
	{
		int			r = file_row(tile, i / nb, rows, gate_up);
		size_t		b;
		const uint4 *codes;
		uint4		q;

		if (r < 0)
			continue;
		b = ((size_t) e * rows + r) * nb + i % nb;
		codes = (const uint4 *) (blocks + b * 16);
		q = *codes;
		/* codes 0 and 8 are +-0: a block is nonzero when some magnitude bits are set */
		if (((q.x | q.y | q.z | q.w) & 0x77777777u) != 0)
			s_max = max(s_max, (int) scales[b]);
	}
	for (int o = 16; o > 0; o >>= 1)
		s_max = max(s_max, __shfl_xor_sync(0xffffffffu, s_max, o));
	if (lane == 0)
		tile_scale[warp_id] = s_max < 0 ? 1.0f : ldexpf(1.0f, s_max - 127 - MOE_X_MAX);
}

/* Packs fragments and multiplier words for every (expert, tile, chunk, lane). */
__global__ void
mxfp4_relayout_kernel(const uint8_t *__restrict__ blocks, const uint8_t *__restrict__ scales,
					  int E, int rows, int cols, int gate_up, int rtiles, int kc,
					  const float *__restrict__ tile_scale, uint4 *__restrict__ out_blocks,
					  uint32_t *__restrict__ out_scales)
{
	int64_t		id = (int64_t) blockIdx.x * blockDim.x + threadIdx.x;
	int			nb = cols / 32;
	int			lane = (int) (id & 31);
	int64_t		piece = id >> 5;	/* (e * rtiles + tile) * kc + chunk */
	int			chunk;
	int			tile;
	int			e;
	uint32_t	words[4];

	if (piece >= (int64_t) E * rtiles * kc)
		return;
	chunk = (int) (piece % kc);
	tile = (int) ((piece / kc) % rtiles);
	e = (int) (piece / ((int64_t) kc * rtiles));

	for (int ks = 0; ks < 4; ks++)
	{
		uint32_t	w = 0;

		for (int j = 0; j < 4; j++)
			for (int v = 0; v < 2; v++)
			{
				int			r = file_row(tile, frag_a_row(lane, j), rows, gate_up);
				int			col = chunk * 64 + ks * 16 + frag_a_col(lane, j, v);
				unsigned	code = 0;

				if (r >= 0 && col < cols)
				{
					uint8_t		byte = blocks[(((size_t) e * rows + r) * nb + col / 32) * 16 + (col % 32) / 2];

					code = (col & 1) ? byte >> 4 : byte & 15;
				}
				w = fp4_pack(w, j, v, code);
			}
		words[ks] = w;
	}
	out_blocks[id] = make_uint4(words[0], words[1], words[2], words[3]);

	if ((lane & 3) == 0)
	{
		int			g = lane >> 2;
		int			G = ilogbf(tile_scale[(int64_t) e * rtiles + tile]);
		uint32_t	sw = 0;

		for (int i = 0; i < 4; i++)
		{
			int			r = file_row(tile, g + ((i >> 1) ? 8 : 0), rows, gate_up);
			int			b = chunk * 2 + (i & 1);

			if (r >= 0 && b < nb)
				sw |= moe_scale_field(scales[((size_t) e * rows + r) * nb + b], G) << (8 * i);
		}
		out_scales[piece * 8 + g] = sw;
	}
}

/* Launches the conversion of one [E][rows][cols] matrix. */
cudaError_t
launch_mxfp4_relayout(const uint8_t *blocks, const uint8_t *scales, int E, int rows, int cols,
					  int gate_up, uint4 *out_blocks, uint32_t *out_scales, float *out_tile_scale,
					  cudaStream_t stream)
{
	int			rtiles = moe_row_tiles(rows, gate_up);
	int			kc = div_up(cols, 64);
	int64_t		tile_threads = (int64_t) E * rtiles * 32;
	int64_t		threads = (int64_t) E * rtiles * kc * 32;
	int			block = 256;
	cudaError_t rc;

	mxfp4_tile_scale_kernel<<<(unsigned) ((tile_threads + block - 1) / block), block, 0, stream>>>(
		blocks, scales, E, rows, cols, gate_up, rtiles, out_tile_scale);
	if ((rc = cudaGetLastError()) != cudaSuccess)
		return rc;
	mxfp4_relayout_kernel<<<(unsigned) ((threads + block - 1) / block), block, 0, stream>>>(
		blocks, scales, E, rows, cols, gate_up, rtiles, kc, out_tile_scale, out_blocks, out_scales);
	return cudaGetLastError();
}
