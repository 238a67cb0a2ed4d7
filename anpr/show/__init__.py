"""What a person looks at: the side-by-side demo, the compliance report, the letter that
answers a data subject, the annotated video.

Imports run and every stage below it.
"""
