"""The papers, one package each: what a method is and how it is trained and drawn.

``regional_attention`` (Kim & Yoon), ``aml`` (Tolias, Sicre & Jégou: MAC, R-MAC and AML re-ranking),
``salient_regions`` (Jeong et al.), ``local_similarity`` (Chen et al.), ``detect_to_retrieve`` (Teichmann et al.,
with its landmark detector). A paper's package imports the engine (``lit_retrieval.data``, ``retrieval``,
``backbones``, ...); the engine never imports a paper: it reaches a method through the registries
(``retrieval.interface.RETRIEVERS``, ``retrieval.methods.METHODS``), by name.
"""
