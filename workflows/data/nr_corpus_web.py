"""Non-English paragraphs and web boilerplate for the NaturalReasoning corpus.

Other languages get a reasoning pool (physics and money, with computed
numbers) and a descriptive pool; boilerplate is what crawls are full of:
cookie banners, navigation menus, shop listings, recipes, spam and stubs.
"""

from __future__ import annotations

import random

from nr_corpus_en import NAMES, TOWNS, pick

# {v}, {t}, {h}: a falling object (height h, time t, speed v); {p}, {r}, {n}, {fv}: compound interest
REASONING: dict[str, tuple[str, ...]] = {
    "de": (
        "[Betrachten wir|Nehmen wir] einen Stein, der aus {h} m Höhe fällt. Ohne Luftwiderstand gilt "
        "h = g t²/2, also braucht er t = √(2h/g) ≈ {t} s. Daraus folgt eine Aufprallgeschwindigkeit "
        "von v = g t ≈ {v} m/s. Weil v mit der Wurzel aus h wächst, verdoppelt eine doppelte Höhe "
        "die Geschwindigkeit nicht.",
        "Wer {p} Euro zu {r} Prozent jährlich anlegt, hat nach {n} Jahren {fv} Euro, denn der Zins "
        "wird jedes Jahr auf den neuen Stand berechnet. [Deshalb|Daher] wächst das Kapital schneller "
        "als bei einfacher Verzinsung, und nach der Zweiundsiebziger-Regel verdoppelt es sich in "
        "etwa 72/{r} Jahren.",
    ),
    "fr": (
        "[Considérons|Prenons] une pierre lâchée d'une hauteur de {h} m. Sans frottement de l'air, "
        "h = g t²/2, donc elle met t = √(2h/g) ≈ {t} s à tomber. Il s'ensuit que sa vitesse à "
        "l'impact vaut v = g t ≈ {v} m/s. Comme v croît avec la racine de h, doubler la hauteur ne "
        "double pas la vitesse.",
        "Si l'on place {p} euros à {r} % par an, on obtient {fv} euros au bout de {n} ans, parce que "
        "les intérêts s'ajoutent chaque année au capital. [C'est pourquoi|Par conséquent] le capital "
        "croît plus vite qu'avec des intérêts simples.",
    ),
    "es": (
        "[Consideremos|Supongamos] una piedra que cae desde {h} m de altura. Sin rozamiento del aire, "
        "h = g t²/2, por lo tanto tarda t = √(2h/g) ≈ {t} s. De ello se deduce que la velocidad al "
        "llegar al suelo es v = g t ≈ {v} m/s. Como v crece con la raíz de h, duplicar la altura no "
        "duplica la velocidad.",
        "Quien invierte {p} euros al {r} % anual tiene {fv} euros después de {n} años, porque los "
        "intereses se suman cada año al capital. [Por eso|Por consiguiente] el capital crece más "
        "deprisa que con interés simple.",
    ),
    "it": (
        "Consideriamo un sasso lasciato cadere da {h} m. Senza attrito dell'aria h = g t²/2, quindi "
        "impiega t ≈ {t} s e arriva a terra con velocità v = g t ≈ {v} m/s. Poiché v cresce con la "
        "radice di h, raddoppiare l'altezza non raddoppia la velocità.",
    ),
    "pt": (
        "Consideremos uma pedra que cai de {h} m de altura. Sem resistência do ar, h = g t²/2, "
        "portanto ela leva t ≈ {t} s e atinge o chão a v = g t ≈ {v} m/s. Como v cresce com a raiz "
        "de h, dobrar a altura não dobra a velocidade.",
    ),
    "nl": (
        "Neem een steen die van {h} m hoogte valt. Zonder luchtweerstand geldt h = g t²/2, dus "
        "duurt de val t ≈ {t} s en is de snelheid bij de grond v = g t ≈ {v} m/s. Omdat v groeit "
        "met de wortel van h, verdubbelt een dubbele hoogte de snelheid niet.",
    ),
    "pl": (
        "Rozważmy kamień spadający z wysokości {h} m. Bez oporu powietrza h = g t²/2, zatem spada "
        "on przez t ≈ {t} s i uderza w ziemię z prędkością v = g t ≈ {v} m/s. Ponieważ prędkość "
        "rośnie jak pierwiastek z wysokości, podwojenie wysokości nie podwaja prędkości.",
    ),
}

PROSE: dict[str, tuple[str, ...]] = {
    "de": ("Am Wochenende waren wir in {town} und sind [lange|stundenlang] am Fluss spazieren gegangen.",
           "Das Wetter war [herrlich|etwas windig|leider regnerisch], aber die Stimmung war gut.",
           "Auf dem Marktplatz gab es frisches Brot, Käse und [Kaffee|Kuchen] aus der Region.",
           "{name} hat uns das alte Rathaus und die kleine Kirche gezeigt.",
           "Am Abend spielte eine Band auf dem Platz vor dem Museum."),
    "fr": ("Le week-end dernier, nous sommes allés à {town} pour voir la mer.",
           "Le marché du samedi est [magnifique|très animé] et les fromages sont excellents.",
           "{name} nous a fait visiter la vieille ville et le petit musée du port.",
           "Le soir, nous avons dîné dans un restaurant [familial|au bord de l'eau].",
           "Les photos de la journée sont dans la galerie ci-dessous."),
    "es": ("El fin de semana pasado fuimos a {town} con unos amigos.",
           "El mercado estaba lleno de gente y olía a pan recién hecho.",
           "{name} nos enseñó la plaza mayor y la iglesia antigua.",
           "Por la noche hubo música en la calle y fuegos artificiales.",
           "Volveremos [el año que viene|en primavera] sin duda."),
    "it": ("Lo scorso fine settimana siamo stati a {town} con la famiglia.",
           "Il mercato era pieno di frutta, formaggi e pane fresco.",
           "{name} ci ha mostrato la piazza e la vecchia chiesa del paese."),
    "pt": ("No último fim de semana fomos a {town} com alguns amigos.",
           "O mercado estava cheio de gente e cheirava a pão fresco.",
           "{name} mostrou-nos a praça principal e a igreja antiga."),
    "nl": ("Vorig weekend zijn we naar {town} geweest om langs de rivier te wandelen.",
           "Op de markt kochten we vers brood, kaas en appels.",
           "{name} liet ons het oude stadhuis en de kleine haven zien."),
    "pl": ("W zeszły weekend pojechaliśmy do miasta {town} z przyjaciółmi.",
           "Na rynku było pełno ludzi i pachniało świeżym chlebem.",
           "{name} pokazał nam stary ratusz i mały kościół."),
}

COOKIE: dict[str, str] = {
    "en": "We use cookies to improve your experience. By continuing you accept our Cookie Policy "
          "and Privacy Policy. [Accept all cookies|Accept] | [Manage preferences|Settings]",
    "de": "Wir verwenden Cookies, um Ihnen das beste Erlebnis zu bieten. Datenschutz | Impressum | "
          "Alle Cookies akzeptieren",
    "fr": "Nous utilisons des cookies pour améliorer votre expérience. Politique de confidentialité | "
          "Tout accepter",
    "es": "Utilizamos cookies para mejorar su experiencia. Política de privacidad | Aceptar todas",
}
NAV = ("Home", "About", "Blog", "Shop", "Contact", "News", "FAQ", "Careers", "Login", "Search",
       "Products", "Services", "Events", "Support", "Sign in", "Cart")
PRODUCTS = ("Wireless Earbuds", "Ceramic Mug", "Yoga Mat", "LED Desk Lamp", "Running Shoes",
            "Leather Wallet", "Phone Case", "Water Bottle", "Backpack", "Sun Hat", "Garden Hose")
DISHES = (("Tomato Soup", ("tomatoes", "onion", "garlic", "olive oil", "salt", "basil")),
          ("Pancakes", ("flour", "milk", "eggs", "sugar", "butter", "baking powder")),
          ("Lentil Curry", ("red lentils", "coconut milk", "onion", "curry paste", "rice")),
          ("Apple Crumble", ("apples", "flour", "butter", "brown sugar", "cinnamon", "oats")),
          ("Guacamole", ("avocados", "lime", "red onion", "coriander", "chili", "salt")))


def fill(template: str, rng: random.Random) -> str:
    h = rng.choice([5, 10, 20, 45, 80])
    t = (2 * h / 9.81) ** 0.5
    p, r, n = rng.choice([1000, 5000, 10000]), rng.choice([2, 3, 4, 5]), rng.choice([10, 20, 30])
    text = template.format(h=h, t=f"{t:.2f}", v=f"{9.81 * t:.1f}", p=p, r=r, n=n,
                           fv=f"{p * (1 + r / 100) ** n:,.0f}", town=rng.choice(TOWNS),
                           name=rng.choice(NAMES))
    return pick(text, rng)


def foreign_paragraph(rng: random.Random, lang: str, reasoning: bool) -> str:
    pool = REASONING[lang] if reasoning else PROSE[lang]
    k = rng.randint(1, len(pool)) if reasoning else rng.randint(2, len(pool))
    return " ".join(fill(t, rng) for t in rng.sample(pool, k))


def cookie_banner(rng: random.Random, lang: str) -> str:
    return pick(COOKIE.get(lang, COOKIE["en"]), rng)


def nav_menu(rng: random.Random) -> str:
    return " | ".join(rng.sample(NAV, rng.randint(4, 9)))


def footer(rng: random.Random, site: str) -> str:
    return pick(f"© {rng.randint(2015, 2024)} {site}. All rights reserved. [Privacy Policy|Terms of "
                f"Use] | [Contact|Imprint]", rng)


def shop_page(rng: random.Random, site: str) -> str:
    lines = [nav_menu(rng), cookie_banner(rng, "en"), ""]
    for prod in rng.sample(PRODUCTS, rng.randint(4, 9)):
        lines += [f"{prod} - {rng.choice(['Blue', 'Black', 'Green', 'Large', 'Pack of 2'])}",
                  f"${rng.randint(5, 180)}.{rng.choice(['00', '49', '99'])}  "
                  f"★ {rng.randint(3, 5)}.{rng.randint(0, 9)} ({rng.randint(2, 900)} reviews)",
                  pick("[In stock|Only 3 left|Ships in 2 days]", rng), "Add to cart", ""]
    lines += [pick("Free shipping on orders over $[50|75|100]!", rng),
              "Subscribe to our newsletter for 10% off your first order.", footer(rng, site)]
    return "\n".join(lines)


def recipe_page(rng: random.Random) -> str:
    dish, items = rng.choice(DISHES)
    lines = [dish, f"Serves {rng.randint(2, 6)} | Prep {rng.randint(5, 30)} min", "", "Ingredients"]
    lines += [f"- {rng.randint(1, 4)} {rng.choice(['cups', 'tbsp', 'g', 'pieces'])} {x}" for x in items]
    lines += ["", "Method"]
    steps = ["Chop everything", "Heat the pan", "Mix well", "Cook for 10 minutes",
             "Season to taste", "Serve warm", "Let it cool"]
    lines += [f"{i}. {s}" for i, s in enumerate(rng.sample(steps, rng.randint(3, 6)), start=1)]
    return "\n".join(lines)


def spam_page(rng: random.Random) -> str:
    prod = rng.choice(PRODUCTS).upper()
    line = pick(f"### BEST CHEAP {prod} BUY NOW [!!!|!!] [CLICK HERE|LIMITED OFFER] ### {prod} "
                f"DISCOUNT ###", rng)
    return "\n".join([line] * rng.randint(8, 40))


STUBS = ("Page not found.", "This page is under construction. Check back soon!",
         "Redirecting…", "Access denied. Please log in to continue.",
         "Thank you for your order! A confirmation email is on its way.",
         "Comments are closed.", "No results found for your search.")


def stub_page(rng: random.Random) -> str:
    return rng.choice(STUBS)
