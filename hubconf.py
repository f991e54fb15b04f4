"""torch.hub / s3prl entry points for ssamba encoders (see ssamba/interop/s3prl_upstream.py).

    upstream = torch.hub.load("<path to this repository>", "ssamba_local", ckpt="exported/ssamba-tiny", source="local")
"""

dependencies = ["torch", "yaml"]

from ssamba.interop.s3prl_upstream import ssamba_custom, ssamba_local  # noqa: E402,F401
