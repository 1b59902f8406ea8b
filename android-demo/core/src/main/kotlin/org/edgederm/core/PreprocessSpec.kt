package org.edgederm.core

import org.json.JSONArray
import org.json.JSONObject
import java.nio.ByteBuffer
import java.nio.ByteOrder
import kotlin.math.min

/** A card that this app cannot use (bad JSON, unknown field, newer version, unknown rule). */
class CardException(message: String) : IllegalArgumentException(message)

/**
 * The card's `preprocessing` object: `edgederm.preprocess.PreprocessSpec`, executed here exactly
 * as Python does (same rounding, same float32 arithmetic, same Pillow resize).
 */
data class PreprocessSpec(
    val height: Int,
    val width: Int,
    val resize: String = "shorter",
    val cropPct: Double = 0.875,
    val interpolation: Interpolation = Interpolation.BILINEAR,
    val mean: List<Float> = listOf(0.485f, 0.456f, 0.406f),
    val std: List<Float> = listOf(0.229f, 0.224f, 0.225f),
    val channelOrder: String = "RGB",
    val layout: String = "NCHW",
    val dtype: String = "float32",
    val inputScale: Double? = null,
    val inputZeroPoint: Int? = null,
    val padValue: List<Int> = listOf(0, 0, 0),
    val exactDecode: Boolean = false,
    val version: Int = SPEC_VERSION
) {
    init {
        check(resize in RESIZE_MODES, "unknown resize mode '$resize'")
        check(channelOrder == "RGB" || channelOrder == "BGR", "unknown channel order '$channelOrder'")
        check(layout == "NCHW" || layout == "NHWC", "unknown layout '$layout'")
        check(dtype in DTYPES, "unknown dtype '$dtype'")
        check(height > 0 && width > 0, "input size must be positive")
        check(mean.size == 3 && std.size == 3 && padValue.size == 3, "mean, std and pad_value need 3 values")
        check(cropPct > 0.0, "crop_pct must be positive")
        if (dtype == "int8" || dtype == "uint8") {
            check(inputScale != null && inputZeroPoint != null, "integer input needs input_scale and input_zero_point")
        }
    }

    /** The model input's shape with a batch of one. */
    val shape: IntArray
        get() = if (layout == "NCHW") intArrayOf(1, 3, height, width) else intArrayOf(1, height, width, 3)

    /**
     * `edgederm.preprocess.decode_size`: the smallest side a photo may be decoded at (null: every
     * pixel, when the card says `exact_decode`). Twice the largest side the resize produces.
     */
    fun decodeSize(): Int? {
        if (exactDecode) return null
        var target = maxOf(height, width)
        if (resize == "shorter") target = maxOf(target, Math.rint(min(height, width) / cropPct).toInt())
        return 2 * target
    }

    /** The (width, height) an image of size ([w], [h]) is resized to before cropping. */
    fun resizeTarget(w: Int, h: Int): Pair<Int, Int> {
        // Math.rint is Python's round(): half to even.
        if (resize == "stretch") return Pair(width, height)
        if (resize == "pad") {
            val scale = min(width.toDouble() / w, height.toDouble() / h)
            return Pair(maxOf(1, Math.rint(w * scale).toInt()), maxOf(1, Math.rint(h * scale).toInt()))
        }
        val shortTarget = Math.rint(min(height, width) / cropPct).toInt()
        val scale = shortTarget.toDouble() / min(w, h)
        return if (w <= h) Pair(shortTarget, maxOf(1, Math.rint(h * scale).toInt()))
        else Pair(maxOf(1, Math.rint(w * scale).toInt()), shortTarget)
    }

    companion object {
        const val SPEC_VERSION = 1
        private val RESIZE_MODES = setOf("shorter", "stretch", "pad")
        private val DTYPES = setOf("float32", "float16", "uint8", "int8")
        private val KNOWN = setOf(
            "input_size", "resize", "crop_pct", "interpolation", "mean", "std", "channel_order", "layout",
            "dtype", "input_scale", "input_zero_point", "pad_value", "exact_decode", "version", "extra"
        )

        private fun check(ok: Boolean, message: String) {
            if (!ok) throw CardException("bad preprocessing spec: $message")
        }

        /** Parse the card's `preprocessing` object; the same refusals as `PreprocessSpec.from_dict`. */
        fun fromJson(o: JSONObject): PreprocessSpec {
            val unknown = o.keys().asSequence().filter { it !in KNOWN }.sorted().toList()
            if (unknown.isNotEmpty()) throw CardException("unknown preprocessing fields: $unknown")
            val version = o.optInt("version", SPEC_VERSION)
            if (version > SPEC_VERSION) {
                throw CardException(
                    "preprocessing spec version $version is newer than this app understands ($SPEC_VERSION): update the app"
                )
            }
            try {
                val size = o.getJSONArray("input_size")
                check(size.length() == 2, "input_size needs (height, width)")
                return PreprocessSpec(
                    height = size.getInt(0),
                    width = size.getInt(1),
                    resize = o.optString("resize", "shorter"),
                    cropPct = o.optDouble("crop_pct", 0.875),
                    interpolation = Interpolation.of(o.optString("interpolation", "bilinear")),
                    mean = floats(o.optJSONArray("mean"), listOf(0.485f, 0.456f, 0.406f)),
                    std = floats(o.optJSONArray("std"), listOf(0.229f, 0.224f, 0.225f)),
                    channelOrder = o.optString("channel_order", "RGB"),
                    layout = o.optString("layout", "NCHW"),
                    dtype = o.optString("dtype", "float32"),
                    inputScale = if (o.isNull("input_scale")) null else o.getDouble("input_scale"),
                    inputZeroPoint = if (o.isNull("input_zero_point")) null else o.getInt("input_zero_point"),
                    padValue = o.optJSONArray("pad_value")?.let { a -> List(a.length()) { a.getInt(it) } } ?: listOf(0, 0, 0),
                    exactDecode = o.optBoolean("exact_decode", false),
                    version = version
                )
            } catch (e: org.json.JSONException) {
                throw CardException("bad preprocessing spec: ${e.message}")
            }
        }

        // np.asarray(mean, np.float32): the double from JSON rounded to float once.
        private fun floats(a: JSONArray?, default: List<Float>): List<Float> =
            a?.let { arr -> List(arr.length()) { arr.getDouble(it).toFloat() } } ?: default
    }
}

/**
 * A model input with a batch of one: [values] hold the exact numbers of the spec's dtype (integers
 * and float16 values are exact in float), [toByteBuffer] gives the bytes LiteRT reads.
 */
class ModelInput(val shape: IntArray, val dtype: String, val values: FloatArray) {
    fun toByteBuffer(): ByteBuffer {
        val bytesPer = when (dtype) { "float32" -> 4; "float16" -> 2; else -> 1 }
        val buf = ByteBuffer.allocateDirect(values.size * bytesPer).order(ByteOrder.nativeOrder())
        when (dtype) {
            "float32" -> for (v in values) buf.putFloat(v)
            "float16" -> for (v in values) buf.putShort(Half.fromFloat(v))
            else -> for (v in values) buf.put(v.toInt().toByte()) // int8 as is, uint8 wraps to its bit pattern
        }
        buf.rewind()
        return buf
    }
}

/** IEEE binary16 conversion, round to nearest even (numpy's `astype(float16)`). */
object Half {
    fun fromFloat(f: Float): Short {
        val bits = java.lang.Float.floatToRawIntBits(f)
        val sign = (bits ushr 16) and 0x8000
        val exp = (bits ushr 23) and 0xFF
        val mant = bits and 0x7FFFFF
        if (exp == 0xFF) return (sign or 0x7C00 or (if (mant != 0) 0x200 else 0)).toShort() // inf / nan
        val e = exp - 127 + 15
        if (e >= 0x1F) return (sign or 0x7C00).toShort() // overflow: infinity
        if (e <= 0) {
            if (e < -10) return sign.toShort() // underflows to (signed) zero
            val m = mant or 0x800000 // subnormal half: shift the implicit bit in
            val shift = 14 - e
            var h = m ushr shift
            val rem = m and ((1 shl shift) - 1)
            val halfway = 1 shl (shift - 1)
            if (rem > halfway || (rem == halfway && (h and 1) == 1)) h += 1
            return (sign or h).toShort()
        }
        var h = (e shl 10) or (mant ushr 13)
        val rem = mant and 0x1FFF
        if (rem > 0x1000 || (rem == 0x1000 && (h and 1) == 1)) h += 1 // may carry into the exponent: correct
        return (sign or h).toShort()
    }

    fun toFloat(h: Short): Float {
        val x = h.toInt() and 0xFFFF
        val sign = (x and 0x8000) shl 16
        val exp = (x ushr 10) and 0x1F
        val mant = x and 0x3FF
        val bits = when {
            exp == 0 && mant == 0 -> sign
            exp == 0 -> { // subnormal: normalise
                var e = -14
                var m = mant
                while (m and 0x400 == 0) { m = m shl 1; e -= 1 }
                sign or ((e + 127) shl 23) or ((m and 0x3FF) shl 13)
            }
            exp == 0x1F -> sign or 0x7F800000 or (mant shl 13)
            else -> sign or ((exp - 15 + 127) shl 23) or (mant shl 13)
        }
        return java.lang.Float.intBitsToFloat(bits)
    }

    /** The float16 value nearest to [f], as a float. */
    fun round(f: Float): Float = toFloat(fromFloat(f))
}
