package org.edgederm.core

/** Latency summary of the benchmark screen, with the percentiles `edgederm bench` reports. */
class LatencyStats(val n: Int, val meanMs: Double, val p50Ms: Double, val p90Ms: Double, val minMs: Double, val maxMs: Double) {
    companion object {
        fun of(samplesMs: DoubleArray): LatencyStats {
            require(samplesMs.isNotEmpty()) { "no samples" }
            val s = samplesMs.sortedArray()
            return LatencyStats(s.size, s.average(), percentile(s, 50.0), percentile(s, 90.0), s.first(), s.last())
        }

        /** numpy's default percentile: linear interpolation between ranks of the sorted samples. */
        fun percentile(sorted: DoubleArray, q: Double): Double {
            val pos = (sorted.size - 1) * q / 100.0
            val lo = Math.floor(pos).toInt()
            val hi = minOf(lo + 1, sorted.size - 1)
            return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo)
        }
    }
}

/** The runtime's `_dequantize` for integer output tensors: (q - zero_point) * scale in float32. */
fun dequantize(q: IntArray, scale: Float, zeroPoint: Int): DoubleArray =
    DoubleArray(q.size) { ((q[it].toFloat() - zeroPoint.toFloat()) * scale).toDouble() }
