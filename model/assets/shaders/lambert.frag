#version 330 core
// metahmr's mesh fragment shader for pyrender: the diffuse part of pyrender's
// metallic-roughness shading for a dielectric (metallic 0), without its specular lobe,
// which costs most of the software rasteriser's time on SMPL-sized meshes.
// Colours are linear; the output is gamma-encoded (1/2.2), as pyrender's shader does.

struct DirectionalLight {
    vec3 color;
    float intensity;
    vec3 direction;  // the direction the light travels, world frame
};

struct Material {
    vec4 base_color_factor;
};

uniform Material material;
uniform DirectionalLight directional_lights[MAX_DIRECTIONAL_LIGHTS];
uniform int n_directional_lights;
uniform vec3 ambient_light;

in vec3 frag_normal;
in vec4 vertex_color;

out vec4 frag_color;

const float PI = 3.141592653589793;
const float DIELECTRIC_DIFFUSE = 0.96;  // 1 - F0 with F0 = 0.04, as in pyrender

void main()
{
    vec4 base = material.base_color_factor * vertex_color;
    vec3 n = normalize(frag_normal);
    vec3 radiance = ambient_light;
    for (int i = 0; i < n_directional_lights; i++) {
        float nl = max(dot(n, -directional_lights[i].direction), 0.0);
        radiance += DIELECTRIC_DIFFUSE / PI * nl
            * directional_lights[i].intensity * directional_lights[i].color;
    }
    vec3 color = base.rgb * radiance;
    frag_color = clamp(vec4(pow(color, vec3(1.0 / 2.2)), base.a), 0.0, 1.0);
}
