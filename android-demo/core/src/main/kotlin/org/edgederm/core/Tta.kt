package org.edgederm.core

/**
 * The TTA views of `edgederm/tta.py`, on the uint8 image after the spec's geometric step: the
 * eight dihedral transforms (Pillow's `transpose` operations, exact pixel permutations) and two
 * centred zooms resized back with the spec's interpolation. Probabilities are averaged over views.
 */
object Tta {
    val VIEWS = listOf("identity", "hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "transverse", "zoom90", "zoom80")

    fun apply(view: String, img: RgbImage, spec: PreprocessSpec): RgbImage {
        val w = img.width
        val h = img.height
        return when (view) {
            "identity" -> img
            "hflip" -> permute(img, w, h) { x, y -> idx(img, w - 1 - x, y) }
            "vflip" -> permute(img, w, h) { x, y -> idx(img, x, h - 1 - y) }
            "rot90" -> permute(img, h, w) { x, y -> idx(img, w - 1 - y, x) } // counter-clockwise
            "rot180" -> permute(img, w, h) { x, y -> idx(img, w - 1 - x, h - 1 - y) }
            "rot270" -> permute(img, h, w) { x, y -> idx(img, y, h - 1 - x) }
            "transpose" -> permute(img, h, w) { x, y -> idx(img, y, x) }
            "transverse" -> permute(img, h, w) { x, y -> idx(img, w - 1 - y, h - 1 - x) }
            "zoom90" -> zoom(img, 0.9, spec)
            "zoom80" -> zoom(img, 0.8, spec)
            else -> throw CardException("unknown TTA view '$view'; known: $VIEWS")
        }
    }

    private fun idx(img: RgbImage, x: Int, y: Int): Int = (y * img.width + x) * 3

    private inline fun permute(img: RgbImage, outW: Int, outH: Int, src: (Int, Int) -> Int): RgbImage {
        val out = ByteArray(outW * outH * 3)
        for (y in 0 until outH) for (x in 0 until outW) {
            System.arraycopy(img.pixels, src(x, y), out, (y * outW + x) * 3, 3)
        }
        return RgbImage(outW, outH, out)
    }

    /** Centred crop of [fraction] of each side, resized back to the image size. */
    private fun zoom(img: RgbImage, fraction: Double, spec: PreprocessSpec): RgbImage {
        val cw = Math.rint(img.width * fraction).toInt()
        val ch = Math.rint(img.height * fraction).toInt()
        val crop = Preprocess.crop(img, Math.floorDiv(img.width - cw, 2), Math.floorDiv(img.height - ch, 2), cw, ch)
        return Resample.resize(crop, img.width, img.height, spec.interpolation)
    }
}
