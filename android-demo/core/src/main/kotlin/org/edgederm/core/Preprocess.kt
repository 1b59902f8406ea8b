package org.edgederm.core

/**
 * `PreprocessSpec.apply` in Kotlin: geometry (resize, crop or pad), normalisation, channel
 * order, layout and dtype. Each step mirrors `edgederm/preprocess.py` line for line; the golden
 * tests compare every step's output with Python's on real images.
 */
object Preprocess {
    /** Resize and crop/pad to the input size (`PreprocessSpec.geometric`). */
    fun geometric(img: RgbImage, spec: PreprocessSpec): RgbImage {
        val (tw, th) = spec.resizeTarget(img.width, img.height)
        val resized = Resample.resize(img, tw, th, spec.interpolation)
        if (spec.resize == "pad") {
            val canvas = RgbImage.filled(spec.width, spec.height, spec.padValue.toIntArray())
            return paste(canvas, resized, Math.floorDiv(spec.width - tw, 2), Math.floorDiv(spec.height - th, 2))
        }
        if (tw == spec.width && th == spec.height) return resized
        val left = Math.rint((tw - spec.width) / 2.0).toInt()
        val top = Math.rint((th - spec.height) / 2.0).toInt()
        return crop(resized, left, top, spec.width, spec.height)
    }

    /** Pillow's `crop`: a window that may extend past the image, where it is black. */
    fun crop(img: RgbImage, left: Int, top: Int, w: Int, h: Int): RgbImage {
        val out = ByteArray(w * h * 3)
        for (y in 0 until h) {
            val sy = y + top
            if (sy < 0 || sy >= img.height) continue
            for (x in 0 until w) {
                val sx = x + left
                if (sx < 0 || sx >= img.width) continue
                System.arraycopy(img.pixels, (sy * img.width + sx) * 3, out, (y * w + x) * 3, 3)
            }
        }
        return RgbImage(w, h, out)
    }

    private fun paste(canvas: RgbImage, img: RgbImage, left: Int, top: Int): RgbImage {
        val out = canvas.pixels.copyOf()
        for (y in 0 until img.height) {
            val dy = y + top
            if (dy < 0 || dy >= canvas.height) continue
            for (x in 0 until img.width) {
                val dx = x + left
                if (dx < 0 || dx >= canvas.width) continue
                System.arraycopy(img.pixels, (y * img.width + x) * 3, out, (dy * canvas.width + dx) * 3, 3)
            }
        }
        return RgbImage(canvas.width, canvas.height, out)
    }

    /**
     * uint8 RGB → normalised float32 HxWx3 in the spec's channel order (`PreprocessSpec.normalize`).
     * The same float32 operations in the same order as numpy, so the values are identical.
     */
    fun normalize(img: RgbImage, spec: PreprocessSpec): FloatArray {
        val n = img.width * img.height
        val out = FloatArray(n * 3)
        val bgr = spec.channelOrder == "BGR"
        for (i in 0 until n) {
            for (c in 0 until 3) {
                val v = (img.pixels[i * 3 + c].toInt() and 0xFF).toFloat() / 255.0f
                val x = (v - spec.mean[c]) / spec.std[c]
                out[i * 3 + (if (bgr) 2 - c else c)] = x
            }
        }
        return out
    }

    /** Normalised HxWx3 → the spec's layout and dtype (`PreprocessSpec.finalize`). */
    fun finalize(hwc: FloatArray, spec: PreprocessSpec): ModelInput {
        val h = spec.height
        val w = spec.width
        require(hwc.size == h * w * 3) { "expected ${h}x${w}x3 values, got ${hwc.size}" }
        val laid = if (spec.layout == "NHWC") hwc.copyOf() else FloatArray(hwc.size).also { out ->
            for (y in 0 until h) for (x in 0 until w) for (c in 0 until 3) {
                out[(c * h + y) * w + x] = hwc[(y * w + x) * 3 + c]
            }
        }
        val values = when (spec.dtype) {
            "float32" -> laid
            "float16" -> FloatArray(laid.size) { Half.round(laid[it]) }
            else -> quantize(laid, spec.inputScale!!, spec.inputZeroPoint!!, spec.dtype)
        }
        return ModelInput(spec.shape, spec.dtype, values)
    }

    /**
     * q = clip(round(x / scale) + zero_point): `finalize` for integer specs and the runtime's
     * `_quantize` for full-integer models (their tensor's scale and zero point). Division in
     * float32 and round half to even, as numpy does.
     */
    fun quantize(x: FloatArray, scale: Double, zeroPoint: Int, dtype: String): FloatArray {
        val (lo, hi) = when (dtype) {
            "int8" -> Pair(-128f, 127f)
            "uint8" -> Pair(0f, 255f)
            else -> throw CardException("cannot quantize to $dtype")
        }
        val s = scale.toFloat()
        val zp = zeroPoint.toFloat()
        return FloatArray(x.size) {
            val q = Math.rint((x[it] / s).toDouble()).toFloat() + zp
            if (q < lo) lo else if (q > hi) hi else q
        }
    }

    /** One image → one model input (`PreprocessSpec.apply`). */
    fun apply(img: RgbImage, spec: PreprocessSpec): ModelInput = finalize(normalize(geometric(img, spec), spec), spec)

    /** One model input per TTA view (views act on the geometric result, like `tta.py`). */
    fun applyViews(img: RgbImage, spec: PreprocessSpec, views: List<String>): List<ModelInput> {
        val geo = geometric(img, spec)
        return views.map { finalize(normalize(Tta.apply(it, geo, spec), spec), spec) }
    }
}
