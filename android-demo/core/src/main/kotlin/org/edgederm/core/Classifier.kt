package org.edgederm.core

/** The result the app shows: per-class probabilities, the decided class and why. */
class Classification(
    val probabilities: DoubleArray,
    val decided: Int,
    /** The priority threshold that fired, or null when argmax decided (rule or fallback). */
    val firedBy: String?,
    val views: List<String>
) {
    /** True when the decided class is melanoma: the app's flag. */
    fun melanoma(card: Card): Boolean = card.melanomaIndex >= 0 && decided == card.melanomaIndex
}

/**
 * The whole per-image path of `Predictor.predict` for a single-input model: preprocess each TTA
 * view, run the model ([runModel]: one input → raw outputs, LiteRT on the phone), turn outputs into
 * probabilities, average the views and apply the decision rule.
 */
object Classifier {
    fun classify(
        img: RgbImage,
        card: Card,
        views: List<String> = card.ttaViews,
        runModel: (ModelInput) -> DoubleArray
    ): Classification {
        val inputs = Preprocess.applyViews(img, card.spec, views)
        val perView = inputs.map { input ->
            val out = runModel(input)
            require(out.size == card.classes.size) { "model gave ${out.size} outputs for ${card.classes.size} classes" }
            card.toProbabilities(out)
        }
        val probs = meanProbabilities(perView)
        val outcome = card.decision.decide(probs, card.classes)
        return Classification(probs, outcome.index, outcome.firedBy, views)
    }
}
