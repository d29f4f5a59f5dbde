"""CLIP: prompt files, mask crops, the text classifier and head, class maps, `sam-histo zeroshot` and its report."""
