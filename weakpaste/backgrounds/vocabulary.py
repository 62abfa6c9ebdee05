"""Target-class vocabulary and the shipped distractor words (EM-Paste appendix §7, Table 6).

``CLASSES`` maps each COCO class (and the VOC classes, under their COCO counterpart) to its
supercategory and the words a caption may use for it. Only singular forms (and irregular or
invariant plurals) are listed; ``weakpaste.backgrounds.rewrite`` derives regular plurals.
Supercategories are COCO's official ones; VOC's 20 classes are all COCO classes too
(aeroplane = airplane, motorbike = motorcycle, sofa = couch, tvmonitor = tv,
diningtable = dining table, pottedplant = potted plant), so they fall into the same 12.

``TABLE6_DISTRACTORS`` is Table 6 as printed, except the paper's typo "ballon" -> "balloon"
(the text encoder of a text-to-image model knows the word, not the typo). Distractors that
themselves name a target class (Table 6 lists "horse", "sink", "sofa", "gloves", "football",
"basketball", "computer charger", "mp4 player") are dropped when the rewriter is built,
because putting them in a caption would ask the generator for an unlabelled target object.
"""

from __future__ import annotations

SUPERCATEGORIES = ("person", "vehicle", "outdoor", "animal", "accessory", "sports", "kitchen",
                   "food", "furniture", "electronic", "appliance", "indoor")

TABLE6_DISTRACTORS: dict[str, tuple[str, ...]] = {
    "accessory": ("coat", "T-shirt", "gloves", "scarf", "trousers"),
    "animal": ("lion", "tiger", "cheetah", "pig", "horse", "rabbit"),
    "appliance": ("washing machine", "injector", "lamp", "air conditioner", "humidifier"),
    "electronic": ("battery", "computer charger", "circuit board", "mp4 player", "headphone"),
    "food": ("berry", "mango", "pineapple", "watermelon", "olive"),
    "furniture": ("bookcase", "piano", "wardrobe", "washstand", "sofa"),
    "indoor": ("board game", "detergent", "coffee", "pencil case", "drinking straw"),
    "kitchen": ("water-tap", "juicer", "sink", "hot pot", "kettle"),
    "person": ("monkey", "gorilla"),
    "outdoor": ("tree", "billboard", "gate"),
    "sports": ("basketball", "tent", "balloon", "swimming ring", "football"),
    "vehicle": ("tank", "helicopter", "bulldozer", "UFO", "scooter"),
}

# "passenger" is left out on purpose: captions mostly use it as a modifier ("passenger jet").
# class -> (supercategory, words naming it). A word ending in "*" is plural-only or invariant
# (no plural is derived from it and its distractor is put in the plural; "=" marks words
# whose singular and plural are the same, the distractor stays singular).
CLASSES: dict[str, tuple[str, tuple[str, ...]]] = {
    # person
    "person": ("person", (
        "person", "persons*", "people*", "human", "man", "men*", "woman", "women*", "child",
        "children*", "kid", "boy", "girl", "guy", "lady", "ladies*", "gentleman",
        "gentlemen*", "baby", "babies*", "toddler", "adult", "teenager", "teen", "player",
        "skier", "surfer", "skateboarder", "snowboarder", "rider", "biker", "cyclist",
        "pedestrian", "tourist", "student", "athlete", "batter", "catcher",
        "umpire", "chef", "worker", "officer", "policeman", "policemen*", "police officer",
        "businessman", "businessmen*", "cowboy", "soldier", "friend", "mother", "father",
        "mom", "dad", "son", "daughter", "brother", "sister", "bride", "groom", "someone=",
        "somebody=", "spectator", "audience", "crowd", "family", "families*", "visitor", "baker",
        "elder", "bicyclist", "motorcyclist")),
    # vehicle
    "bicycle": ("vehicle", ("bicycle", "bike")),
    "car": ("vehicle", ("car", "automobile", "taxi", "cab", "suv", "sedan", "jeep", "vehicle")),
    "motorcycle": ("vehicle", ("motorcycle", "motorbike", "motor bike", "motor cycle",
                               "moped", "dirt bike")),
    "airplane": ("vehicle", ("airplane", "aeroplane", "plane", "jet", "airliner",
                             "aircraft=", "jetliner")),
    "bus": ("vehicle", ("bus", "busses*", "double decker", "double-decker")),
    "train": ("vehicle", ("train", "locomotive", "tram", "streetcar", "subway")),
    "truck": ("vehicle", ("truck", "lorry", "lorries*", "pickup", "van", "firetruck",
                          "fire truck")),
    "boat": ("vehicle", ("boat", "ship", "sailboat", "yacht", "canoe", "kayak", "ferry",
                         "ferries*", "raft")),
    # outdoor
    "traffic light": ("outdoor", ("traffic light", "stoplight", "stop light",
                                  "traffic signal")),
    "fire hydrant": ("outdoor", ("fire hydrant", "hydrant")),
    "stop sign": ("outdoor", ("stop sign",)),
    "parking meter": ("outdoor", ("parking meter",)),
    "bench": ("outdoor", ("bench",)),
    # animal
    "bird": ("animal", ("bird", "pigeon", "seagull", "gull", "duck", "goose", "geese*",
                        "parrot", "owl", "swan", "sparrow", "crow", "chicken", "hen",
                        "rooster", "vulture", "eagle", "hawk", "flamingo", "pelican", "heron")),
    "cat": ("animal", ("cat", "kitten", "kitty", "kitties*")),
    "dog": ("animal", ("dog", "puppy", "puppies*", "pup", "doggy", "doggie", "poodle")),
    "horse": ("animal", ("horse", "pony", "ponies*", "foal", "stallion", "mare")),
    "sheep": ("animal", ("sheep=", "lamb", "ram")),
    "cow": ("animal", ("cow", "cattle*", "bull", "calf", "calves*", "ox", "oxen*")),
    "elephant": ("animal", ("elephant",)),
    "bear": ("animal", ("bear", "panda", "grizzly", "grizzlies*")),
    "zebra": ("animal", ("zebra",)),
    "giraffe": ("animal", ("giraffe",)),
    # accessory
    "backpack": ("accessory", ("backpack", "rucksack", "knapsack")),
    "umbrella": ("accessory", ("umbrella", "parasol")),
    "handbag": ("accessory", ("handbag", "purse", "hand bag")),
    "tie": ("accessory", ("tie", "necktie", "bow tie")),
    "suitcase": ("accessory", ("suitcase", "luggage=", "baggage=")),
    # sports
    "frisbee": ("sports", ("frisbee", "frisbe")),
    "skis": ("sports", ("ski", "skis*")),
    "snowboard": ("sports", ("snowboard",)),
    "sports ball": ("sports", ("sports ball", "ball", "soccer ball", "tennis ball",
                               "football", "basketball", "volleyball", "softball",
                               "beach ball")),
    "kite": ("sports", ("kite",)),
    "baseball bat": ("sports", ("baseball bat", "bat")),
    "baseball glove": ("sports", ("baseball glove", "glove", "mitt")),
    "skateboard": ("sports", ("skateboard", "skate board")),
    "surfboard": ("sports", ("surfboard", "surf board")),
    "tennis racket": ("sports", ("tennis racket", "racket", "racquet")),
    # kitchen
    "bottle": ("kitchen", ("bottle",)),
    "wine glass": ("kitchen", ("wine glass", "wineglass")),
    "cup": ("kitchen", ("cup", "mug", "teacup")),
    "fork": ("kitchen", ("fork",)),
    "knife": ("kitchen", ("knife", "knives*")),
    "spoon": ("kitchen", ("spoon",)),
    "bowl": ("kitchen", ("bowl",)),
    # food
    "banana": ("food", ("banana",)),
    "apple": ("food", ("apple",)),
    "sandwich": ("food", ("sandwich", "burger", "hamburger")),
    "orange": ("food", ("orange",)),
    "broccoli": ("food", ("broccoli=",)),
    "carrot": ("food", ("carrot",)),
    "hot dog": ("food", ("hot dog", "hotdog", "hot-dog")),
    "pizza": ("food", ("pizza",)),
    "donut": ("food", ("donut", "doughnut")),
    "cake": ("food", ("cake", "cupcake")),
    # furniture
    "chair": ("furniture", ("chair", "armchair", "stool")),
    "couch": ("furniture", ("couch", "sofa", "loveseat")),
    "potted plant": ("furniture", ("potted plant", "pottedplant", "plant", "houseplant",
                                   "house plant")),
    "bed": ("furniture", ("bed",)),
    "dining table": ("furniture", ("dining table", "diningtable", "table")),
    "toilet": ("furniture", ("toilet",)),
    # electronic
    "tv": ("electronic", ("tv", "television", "tv monitor", "tvmonitor", "monitor")),
    "laptop": ("electronic", ("laptop", "lap top", "computer")),
    "mouse": ("electronic", ("mouse", "mice*")),
    "remote": ("electronic", ("remote", "remote control", "controller")),
    "keyboard": ("electronic", ("keyboard",)),
    "cell phone": ("electronic", ("cell phone", "cellphone", "phone", "mobile phone",
                                  "smartphone", "smart phone", "telephone")),
    # appliance
    "microwave": ("appliance", ("microwave",)),
    "oven": ("appliance", ("oven", "stove")),
    "toaster": ("appliance", ("toaster",)),
    "sink": ("appliance", ("sink",)),
    "refrigerator": ("appliance", ("refrigerator", "fridge", "freezer")),
    # indoor
    "book": ("indoor", ("book",)),
    "clock": ("indoor", ("clock",)),
    "vase": ("indoor", ("vase",)),
    "scissors": ("indoor", ("scissors*", "scissor")),
    "teddy bear": ("indoor", ("teddy bear", "teddy", "teddybear", "stuffed animal")),
    "hair drier": ("indoor", ("hair drier", "hair dryer", "hairdryer", "blow dryer")),
    "toothbrush": ("indoor", ("toothbrush", "tooth brush")),
}

# COCO's 80 class names (the CLIP rejection prompts), in COCO's category order.
COCO_CLASSES = tuple(CLASSES)
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
