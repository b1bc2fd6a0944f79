"""Name -> class tables, so configs choose modules by name and code never branches on names."""

from earshot.models.attention import ContentAttention, LocationAwareAttention
from earshot.models.crdnn import CRDNN

ENCODERS = {"crdnn": CRDNN}
ATTENTIONS = {"content": ContentAttention, "location": LocationAwareAttention}
