// verbatim logic from llama.cpp b11434 tools/mtmd/mtmd-image.cpp (youtuvl preprocess + calc_size_preserved_ratio)
#include <cmath>
#include <cstdio>
#include <algorithm>
struct sz { int width, height; };
static sz youtu(int W, int H, int patch_size, int merge_size, int max_tokens) {
    const int align_size = patch_size * merge_size;
    int image_max_pixels = max_tokens * patch_size * patch_size * merge_size * merge_size;
    const int max_num_patches = image_max_pixels > 0 ? image_max_pixels / (patch_size * patch_size) : 256;
    float scale = 1.0f;
    int target_height = H, target_width = W;
    auto get_scaled_image_size = [align_size](float scale, int size) -> int {
        float scaled_size = size * scale;
        int aligned = static_cast<int>(std::ceil(scaled_size / align_size)) * align_size;
        return std::max(align_size, aligned);
    };
    while (scale > 0.0f) {
        target_height = get_scaled_image_size(scale, H);
        target_width  = get_scaled_image_size(scale, W);
        int num_patches_h = target_height / patch_size;
        int num_patches_w = target_width / patch_size;
        int num_patches = num_patches_h * num_patches_w;
        if (num_patches > max_num_patches) { scale -= 0.02f; } else { break; }
    }
    return {target_width, target_height};
}
static sz preserved(int width, int height, int align_size, int min_pixels, int max_pixels) {
    auto round_by_factor = [f = align_size](float x) { return static_cast<int>(std::round(x / static_cast<float>(f))) * f; };
    auto ceil_by_factor  = [f = align_size](float x) { return static_cast<int>(std::ceil(x / static_cast<float>(f))) * f; };
    auto floor_by_factor = [f = align_size](float x) { return static_cast<int>(std::floor(x / static_cast<float>(f))) * f; };
    int w_bar = std::max(align_size, round_by_factor(width));
    int h_bar = std::max(align_size, round_by_factor(height));
    if (max_pixels > 0 && h_bar * w_bar > max_pixels) {
        const auto beta = std::sqrt(static_cast<float>(height) * width / max_pixels);
        h_bar = std::max(align_size, floor_by_factor(height / beta));
        w_bar = std::max(align_size, floor_by_factor(width  / beta));
    } else if (min_pixels > 0 && h_bar * w_bar < min_pixels) {
        const auto beta = std::sqrt(static_cast<float>(min_pixels) / (static_cast<float>(height) * width));
        h_bar = ceil_by_factor(height * beta);
        w_bar = ceil_by_factor(width * beta);
    }
    return {w_bar, h_bar};
}
int main() {
    char kind[32]; int w, h, a, b, c, d;
    while (scanf("%31s %d %d %d %d %d %d", kind, &w, &h, &a, &b, &c, &d) == 7) {
        sz r = kind[0] == 'y' ? youtu(w, h, a, b, c) : preserved(w, h, a, c, d);
        printf("%s %d %d %d %d %d %d %d %d\n", kind, w, h, a, b, c, d, r.width, r.height);
    }
}
