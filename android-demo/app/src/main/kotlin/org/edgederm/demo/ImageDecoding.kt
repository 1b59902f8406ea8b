package org.edgederm.demo

import android.content.ContentResolver
import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.graphics.Matrix
import android.net.Uri
import androidx.exifinterface.media.ExifInterface
import org.edgederm.core.RgbImage

/**
 * Photo → 8-bit RGB pixels, the app's counterpart of `edgederm.data.images.load_image`:
 * EXIF orientation applied, and large JPEGs decoded at a reduced scale (`inSampleSize`, like
 * Pillow's JPEG draft with the card's `decode_size`; `minSide` 0 decodes every pixel). BitmapFactory and libjpeg may decode
 * the same file a grey level apart; from these pixels on, the core matches Python exactly.
 */
object ImageDecoding {
    fun decode(resolver: ContentResolver, uri: Uri, minSide: Int): Pair<RgbImage, Bitmap> {
        val bounds = BitmapFactory.Options().apply { inJustDecodeBounds = true }
        resolver.openInputStream(uri).use { BitmapFactory.decodeStream(it, null, bounds) }
        require(bounds.outWidth > 0 && bounds.outHeight > 0) { "not an image: $uri" }
        var sample = 1
        while (minSide > 0 && minOf(bounds.outWidth, bounds.outHeight) / (sample * 2) >= minSide) sample *= 2
        val opts = BitmapFactory.Options().apply {
            inSampleSize = sample
            inPreferredConfig = Bitmap.Config.ARGB_8888
        }
        var bmp = resolver.openInputStream(uri).use { BitmapFactory.decodeStream(it, null, opts) }
            ?: throw IllegalArgumentException("cannot decode $uri")
        val orientation = resolver.openInputStream(uri).use { s ->
            if (s == null) ExifInterface.ORIENTATION_NORMAL
            else ExifInterface(s).getAttributeInt(ExifInterface.TAG_ORIENTATION, ExifInterface.ORIENTATION_NORMAL)
        }
        bmp = orient(bmp, orientation)
        if (bmp.config != Bitmap.Config.ARGB_8888) bmp = bmp.copy(Bitmap.Config.ARGB_8888, false)
        val argb = IntArray(bmp.width * bmp.height)
        bmp.getPixels(argb, 0, bmp.width, 0, 0, bmp.width, bmp.height)
        return Pair(RgbImage.fromArgb(bmp.width, bmp.height, argb), bmp)
    }

    private fun orient(bmp: Bitmap, orientation: Int): Bitmap {
        val m = Matrix()
        when (orientation) {
            ExifInterface.ORIENTATION_FLIP_HORIZONTAL -> m.setScale(-1f, 1f)
            ExifInterface.ORIENTATION_ROTATE_180 -> m.setRotate(180f)
            ExifInterface.ORIENTATION_FLIP_VERTICAL -> m.setScale(1f, -1f)
            ExifInterface.ORIENTATION_TRANSPOSE -> { m.setRotate(90f); m.postScale(-1f, 1f) }
            ExifInterface.ORIENTATION_ROTATE_90 -> m.setRotate(90f)
            ExifInterface.ORIENTATION_TRANSVERSE -> { m.setRotate(-90f); m.postScale(-1f, 1f) }
            ExifInterface.ORIENTATION_ROTATE_270 -> m.setRotate(-90f)
            else -> return bmp
        }
        // A pure 90°-multiple rotation/flip of whole pixels: no filtering, no resampling.
        return Bitmap.createBitmap(bmp, 0, 0, bmp.width, bmp.height, m, false)
    }
}
