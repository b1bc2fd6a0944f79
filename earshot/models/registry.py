"""Name -> class tables, so configs choose modules by name and code never branches on names.

``ENCODERS`` must name the same types as ``config.EncoderConfig.TYPES`` (a test checks):
a new encoder is one module, one config dataclass and one entry in each table.
"""

from earshot.models.attention import (ContentAttention, LocationAwareAttention,
                                      MultiHeadLocationAttention)
from earshot.models.encoders.conformer import Conformer
from earshot.models.encoders.crdnn import CRDNN
from earshot.models.encoders.ssl import SSLEncoder  # (imports transformers only when built)

ENCODERS = {"crdnn": CRDNN, "conformer": Conformer, "ssl": SSLEncoder}
ATTENTIONS = {"content": ContentAttention, "location": LocationAwareAttention,
              "multihead_location": MultiHeadLocationAttention}
