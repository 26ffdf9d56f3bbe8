"""robofm.tokenization: what the DataLoader's collate function runs, apart from the network. The layout of one
sample's tokens and its vocabulary (layout), the SequenceBuilder that turns dataset items into a Sequence
(sequence), and building, saving and loading it from data (build)."""
