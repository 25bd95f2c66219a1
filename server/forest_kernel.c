/* The tree walk of server.fast_paths.CompiledForest in C, called through ctypes (server/forest_kernel.py).
 *
 * Built by `make install` (cc -O2, no -ffast-math: every comparison and addition must round exactly as
 * scikit-learn's do). The arrays are CompiledForest's flattened trees:
 *   node n: goes right when row[features[n]] > thresholds[n], to children[2n + 1], else to children[2n];
 *           a leaf points at itself with an infinite threshold, so a row that reached it stays there;
 *   tree t: starts at roots[t] and is depths[t] levels deep, so depths[t] steps take every row to its leaf.
 * Each row's answer is baseline + values[leaf of tree 0] + values[leaf of tree 1] + ..., added in that order,
 * which is the order and the rounding of scikit-learn's raw_predictions[:, 0] += tree.predict(X).
 *
 * Rows go through in blocks: a block's current nodes and sums stay in the first-level cache while every tree
 * walks it, and within a block the rows are independent, so the processor overlaps their memory loads
 * (a walk without branches on the data: a step costs the same whichever way it goes).
 */
#include <stdint.h>

#define BLOCK_ROWS 256

void forest_predict(const double *rows, int64_t row_count, int64_t column_count, const int64_t *roots,
                    const int32_t *depths, int64_t tree_count, const int32_t *features, const double *thresholds,
                    const int32_t *children, const double *values, double baseline, double *out)
{
    int32_t node[BLOCK_ROWS];
    for (int64_t start = 0; start < row_count; start += BLOCK_ROWS) {
        int64_t block = row_count - start < BLOCK_ROWS ? row_count - start : BLOCK_ROWS;
        const double *block_rows = rows + start * column_count;
        double *sums = out + start;
        for (int64_t r = 0; r < block; r++) {
            sums[r] = baseline;
        }
        for (int64_t tree = 0; tree < tree_count; tree++) {
            int32_t root = (int32_t)roots[tree];
            for (int64_t r = 0; r < block; r++) {
                node[r] = root;
            }
            for (int32_t level = 0; level < depths[tree]; level++) {
                for (int64_t r = 0; r < block; r++) {
                    int32_t at = node[r];
                    int32_t goes_right = block_rows[r * column_count + features[at]] > thresholds[at];
                    node[r] = children[2 * at + goes_right];
                }
            }
            for (int64_t r = 0; r < block; r++) {
                sums[r] += values[node[r]];
            }
        }
    }
}
