/*
 * mxfp4_layout.cu: converts one layer's expert matrix from the checkpoint's
 * MXFP4 layout ([E][rows][cols/32][16] nibble blocks, [E][rows][cols/32]
 * E8M0 scales) to the tensor-core fragment layout of moe_layout.cuh.
 *
 * Runs once per matrix at upload, on the GPU (the raw bytes are copied to a
 * staging buffer first), so loading 9 GB of experts costs no host time.
 * One thread writes one lane's uint4 of one (expert, row tile, 64-column
 * chunk); lanes with t = 0 also write their row group's scale word.  Same
 * number of bytes as the original: only the order changes.
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

/* Packs fragments and scales for every (expert, tile, chunk, lane). */
__global__ void
mxfp4_relayout_kernel(const uint8_t *__restrict__ blocks, const uint8_t *__restrict__ scales,
					  int E, int rows, int cols, int gate_up, int rtiles, int kc,
					  uint4 *__restrict__ out_blocks, uint32_t *__restrict__ out_scales)
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
		uint32_t	sw = 0;

		for (int i = 0; i < 4; i++)
		{
			int			r = file_row(tile, g + ((i >> 1) ? 8 : 0), rows, gate_up);
			int			b = chunk * 2 + (i & 1);
			uint32_t	s = 127;

			if (r >= 0 && b < nb)
				s = scales[((size_t) e * rows + r) * nb + b];
			sw |= s << (8 * i);
		}
		out_scales[piece * 8 + g] = sw;
	}
}

/* Launches the conversion of one [E][rows][cols] matrix. */
cudaError_t
launch_mxfp4_relayout(const uint8_t *blocks, const uint8_t *scales, int E, int rows, int cols,
					  int gate_up, uint4 *out_blocks, uint32_t *out_scales, cudaStream_t stream)
{
	int			rtiles = gate_up ? div_up(rows / 2, 8) : div_up(rows, 16);
	int			kc = div_up(cols, 64);
	int64_t		threads = (int64_t) E * rtiles * kc * 32;
	int			block = 256;

	mxfp4_relayout_kernel<<<(unsigned) ((threads + block - 1) / block), block, 0, stream>>>(
		blocks, scales, E, rows, cols, gate_up, rtiles, kc, out_blocks, out_scales);
	return cudaGetLastError();
}
