#version 330 core
// metahmr's mesh vertex shader for pyrender (replaces its mesh.vert; see model/render.py).
// Same attribute locations and uniforms as pyrender's, so its renderer binds them unchanged.

layout(location = 0) in vec3 position;
#ifdef NORMAL_LOC
layout(location = NORMAL_LOC) in vec3 normal;
#endif
#ifdef COLOR_0_LOC
layout(location = COLOR_0_LOC) in vec4 color_0;
#endif
layout(location = INST_M_LOC) in mat4 inst_m;

uniform mat4 M;
uniform mat4 V;
uniform mat4 P;

out vec3 frag_normal;
out vec4 vertex_color;

void main()
{
    mat4 model = M * inst_m;
    gl_Position = P * V * model * vec4(position, 1.0);
    // Node poses here are rigid (identity, in fact), so the model matrix itself maps
    // normals; pyrender's per-vertex inverse-transpose is not needed.
#ifdef NORMAL_LOC
    frag_normal = mat3(model) * normal;
#else
    frag_normal = vec3(0.0, 0.0, 1.0);
#endif
#ifdef COLOR_0_LOC
    vertex_color = color_0;
#else
    vertex_color = vec4(1.0);
#endif
}
