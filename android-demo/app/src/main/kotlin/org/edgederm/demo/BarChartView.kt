package org.edgederm.demo

import android.content.Context
import android.graphics.Canvas
import android.graphics.Color
import android.graphics.Paint
import android.util.AttributeSet
import android.view.View

/** Horizontal bars: one per class, probability in percent, the decided class highlighted. */
class BarChartView(context: Context, attrs: AttributeSet?) : View(context, attrs) {
    private var labels: List<String> = emptyList()
    private var values: DoubleArray = DoubleArray(0)
    private var highlight = -1
    private val density = resources.displayMetrics.density
    private val rowHeight = 28 * density
    private val text = Paint(Paint.ANTI_ALIAS_FLAG).apply { textSize = 14 * density; color = Color.DKGRAY }
    private val bar = Paint().apply { color = Color.rgb(90, 130, 200) }
    private val hot = Paint().apply { color = Color.rgb(200, 60, 50) }

    fun show(classes: List<String>, probabilities: DoubleArray, decided: Int) {
        labels = classes
        values = probabilities
        highlight = decided
        requestLayout()
        invalidate()
    }

    override fun onMeasure(widthMeasureSpec: Int, heightMeasureSpec: Int) {
        val w = MeasureSpec.getSize(widthMeasureSpec)
        setMeasuredDimension(w, (labels.size * rowHeight).toInt())
    }

    override fun onDraw(canvas: Canvas) {
        super.onDraw(canvas)
        val labelW = (labels.maxOfOrNull { text.measureText(it) } ?: 0f) + 12 * density
        val pctW = text.measureText("100.0%") + 8 * density
        val maxBar = width - labelW - pctW
        for ((i, name) in labels.withIndex()) {
            val top = i * rowHeight
            val base = top + rowHeight * 0.7f
            canvas.drawText(name, 0f, base, text)
            val len = (maxBar * values[i]).toFloat().coerceAtLeast(1f)
            canvas.drawRect(labelW, top + rowHeight * 0.2f, labelW + len, top + rowHeight * 0.8f, if (i == highlight) hot else bar)
            canvas.drawText("%.1f%%".format(100 * values[i]), labelW + len + 4 * density, base, text)
        }
    }
}
