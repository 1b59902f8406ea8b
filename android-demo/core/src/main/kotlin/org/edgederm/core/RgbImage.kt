package org.edgederm.core

/**
 * An 8-bit RGB image, row-major and interleaved (R, G, B per pixel): what Pillow holds after
 * `load_image` and what the app gets from a decoded `Bitmap`. Every preprocessing step works on
 * these bytes, so the phone and Python agree from decoded pixels on.
 */
class RgbImage(val width: Int, val height: Int, val pixels: ByteArray) {
    init {
        require(width > 0 && height > 0) { "image size must be positive, got ${width}x$height" }
        require(pixels.size == width * height * 3) {
            "RGB buffer has ${pixels.size} bytes, expected ${width * height * 3} for ${width}x$height"
        }
    }

    /** Channel [c] of pixel ([x], [y]) as 0..255. */
    fun get(x: Int, y: Int, c: Int): Int = pixels[(y * width + x) * 3 + c].toInt() and 0xFF

    companion object {
        /** A [width]x[height] image filled with one colour. */
        fun filled(width: Int, height: Int, rgb: IntArray): RgbImage {
            val px = ByteArray(width * height * 3)
            for (i in 0 until width * height) {
                px[i * 3] = rgb[0].toByte(); px[i * 3 + 1] = rgb[1].toByte(); px[i * 3 + 2] = rgb[2].toByte()
            }
            return RgbImage(width, height, px)
        }

        /** From Android's ARGB_8888 `Bitmap.getPixels` ints (alpha ignored: photos are opaque). */
        fun fromArgb(width: Int, height: Int, argb: IntArray): RgbImage {
            require(argb.size == width * height) { "ARGB buffer has ${argb.size} pixels, expected ${width * height}" }
            val px = ByteArray(width * height * 3)
            for (i in argb.indices) {
                val p = argb[i]
                px[i * 3] = (p shr 16).toByte(); px[i * 3 + 1] = (p shr 8).toByte(); px[i * 3 + 2] = p.toByte()
            }
            return RgbImage(width, height, px)
        }
    }
}
