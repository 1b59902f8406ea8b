package org.edgederm.core

import kotlin.math.ceil

/** The interpolations of the preprocessing spec (`PreprocessSpec.interpolation`). */
enum class Interpolation(val key: String, internal val support: Double) {
    NEAREST("nearest", 0.0), BILINEAR("bilinear", 1.0), BICUBIC("bicubic", 2.0), LANCZOS("lanczos", 3.0);

    companion object {
        fun of(key: String): Interpolation =
            values().firstOrNull { it.key == key } ?: throw CardException("unknown interpolation '$key'")
    }
}

/**
 * Pillow's `Image.resize(size, filter, reducing_gap=None)` for 8-bit RGB, bit for bit.
 *
 * This is a port of Pillow's `libImaging/Resample.c` (antialiased separable convolution:
 * coefficients in double, converted to 22-bit fixed point, horizontal pass then vertical pass,
 * each rounded and clipped to 8 bits) and of the affine nearest-neighbour path `_imaging.c` uses
 * for NEAREST. Re-implementing the integer arithmetic (instead of a float approximation) makes the
 * app's model input identical to Python's, not merely close.
 */
object Resample {
    private const val PRECISION_BITS = 32 - 8 - 2

    fun resize(img: RgbImage, width: Int, height: Int, interp: Interpolation): RgbImage {
        require(width > 0 && height > 0) { "target size must be positive, got ${width}x$height" }
        if (width == img.width && height == img.height) return img // Pillow returns a copy
        if (interp == Interpolation.NEAREST) return nearest(img, width, height)
        val needH = width != img.width
        val needV = height != img.height
        val vert = Coeffs.compute(img.height, height, interp)
        var cur = img
        var vBounds = vert.bounds
        if (needH) {
            // Only the source rows the vertical pass reads are resampled horizontally.
            val first = vert.bounds[0]
            val last = vert.bounds[height * 2 - 2] + vert.bounds[height * 2 - 1]
            val rows = if (needV) first until last else 0 until img.height
            cur = horizontal(img, width, Coeffs.compute(img.width, width, interp), rows)
            if (needV) {
                vBounds = vert.bounds.copyOf()
                for (i in 0 until height) vBounds[i * 2] -= first
            }
        }
        if (needV) cur = vertical(cur, height, vert, vBounds)
        return cur
    }

    private fun filter(interp: Interpolation, x0: Double): Double {
        var x = x0
        return when (interp) {
            Interpolation.BILINEAR -> {
                if (x < 0.0) x = -x
                if (x < 1.0) 1.0 - x else 0.0
            }
            Interpolation.BICUBIC -> {
                val a = -0.5
                if (x < 0.0) x = -x
                when {
                    x < 1.0 -> ((a + 2.0) * x - (a + 3.0)) * x * x + 1
                    x < 2.0 -> (((x - 5) * x + 8) * x - 4) * a
                    else -> 0.0
                }
            }
            Interpolation.LANCZOS -> if (-3.0 <= x && x < 3.0) sinc(x) * sinc(x / 3) else 0.0
            Interpolation.NEAREST -> throw IllegalStateException("nearest has no filter")
        }
    }

    // StrictMath: fdlibm, reproducible on every JVM/ART (Math.sin may use intrinsics).
    private fun sinc(x0: Double): Double {
        if (x0 == 0.0) return 1.0
        val x = x0 * Math.PI
        return StrictMath.sin(x) / x
    }

    /** Per output pixel: first source index, tap count, and fixed-point weights (ksize each). */
    private class Coeffs(val ksize: Int, val bounds: IntArray, val k: IntArray) {
        companion object {
            fun compute(inSize: Int, outSize: Int, interp: Interpolation): Coeffs {
                val scale = inSize.toDouble() / outSize // box = (0, inSize): in1 - in0 is exact
                val filterscale = if (scale < 1.0) 1.0 else scale
                val support = interp.support * filterscale
                val ksize = ceil(support).toInt() * 2 + 1
                val kk = DoubleArray(outSize * ksize)
                val bounds = IntArray(outSize * 2)
                for (xx in 0 until outSize) {
                    val center = 0.0 + (xx + 0.5) * scale
                    var ww = 0.0
                    val ss = 1.0 / filterscale
                    var xmin = (center - support + 0.5).toInt() // C's (int): truncation
                    if (xmin < 0) xmin = 0
                    var xmax = (center + support + 0.5).toInt()
                    if (xmax > inSize) xmax = inSize
                    xmax -= xmin
                    val o = xx * ksize
                    for (x in 0 until xmax) {
                        val w = filter(interp, (x + xmin - center + 0.5) * ss)
                        kk[o + x] = w
                        ww += w
                    }
                    if (ww != 0.0) for (x in 0 until xmax) kk[o + x] /= ww
                    bounds[xx * 2] = xmin
                    bounds[xx * 2 + 1] = xmax
                }
                val one = (1 shl PRECISION_BITS).toDouble()
                val k = IntArray(kk.size) { i ->
                    if (kk[i] < 0) (-0.5 + kk[i] * one).toInt() else (0.5 + kk[i] * one).toInt()
                }
                return Coeffs(ksize, bounds, k)
            }
        }
    }

    private fun clip8(v: Int): Byte {
        val s = v shr PRECISION_BITS
        return (if (s < 0) 0 else if (s > 255) 255 else s).toByte()
    }

    private fun horizontal(img: RgbImage, outW: Int, c: Coeffs, rows: IntRange): RgbImage {
        val outH = rows.last - rows.first + 1
        val src = img.pixels
        val out = ByteArray(outW * outH * 3)
        val half = 1 shl (PRECISION_BITS - 1)
        for (yy in 0 until outH) {
            val rowOff = (yy + rows.first) * img.width * 3
            for (xx in 0 until outW) {
                val xmin = c.bounds[xx * 2]
                val n = c.bounds[xx * 2 + 1]
                val ko = xx * c.ksize
                var s0 = half; var s1 = half; var s2 = half
                for (x in 0 until n) {
                    val p = rowOff + (x + xmin) * 3
                    val w = c.k[ko + x]
                    s0 += (src[p].toInt() and 0xFF) * w
                    s1 += (src[p + 1].toInt() and 0xFF) * w
                    s2 += (src[p + 2].toInt() and 0xFF) * w
                }
                val q = (yy * outW + xx) * 3
                out[q] = clip8(s0); out[q + 1] = clip8(s1); out[q + 2] = clip8(s2)
            }
        }
        return RgbImage(outW, outH, out)
    }

    private fun vertical(img: RgbImage, outH: Int, c: Coeffs, bounds: IntArray): RgbImage {
        val w = img.width
        val src = img.pixels
        val out = ByteArray(w * outH * 3)
        val half = 1 shl (PRECISION_BITS - 1)
        for (yy in 0 until outH) {
            val ymin = bounds[yy * 2]
            val n = bounds[yy * 2 + 1]
            val ko = yy * c.ksize
            for (xx in 0 until w) {
                var s0 = half; var s1 = half; var s2 = half
                for (y in 0 until n) {
                    val p = ((y + ymin) * w + xx) * 3
                    val k = c.k[ko + y]
                    s0 += (src[p].toInt() and 0xFF) * k
                    s1 += (src[p + 1].toInt() and 0xFF) * k
                    s2 += (src[p + 2].toInt() and 0xFF) * k
                }
                val q = (yy * w + xx) * 3
                out[q] = clip8(s0); out[q + 1] = clip8(s1); out[q + 2] = clip8(s2)
            }
        }
        return RgbImage(w, outH, out)
    }

    /** Pillow's NEAREST resize: an affine scale whose source positions accumulate in double. */
    private fun nearest(img: RgbImage, outW: Int, outH: Int): RgbImage {
        fun table(inSize: Int, outSize: Int): IntArray {
            val a = inSize.toDouble() / outSize
            var o = a * 0.5
            return IntArray(outSize) {
                val v = if (o < 0.0) -1 else o.toInt()
                o += a
                if (v >= inSize) -1 else v
            }
        }
        val xs = table(img.width, outW)
        val ys = table(img.height, outH)
        val out = ByteArray(outW * outH * 3) // out-of-range positions stay 0, as Pillow fills
        for (y in 0 until outH) {
            if (ys[y] < 0) continue
            for (x in 0 until outW) {
                if (xs[x] < 0) continue
                val p = (ys[y] * img.width + xs[x]) * 3
                val q = (y * outW + x) * 3
                out[q] = img.pixels[p]; out[q + 1] = img.pixels[p + 1]; out[q + 2] = img.pixels[p + 2]
            }
        }
        return RgbImage(outW, outH, out)
    }
}
